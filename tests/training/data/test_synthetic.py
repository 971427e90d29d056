"""generate_synthetic: deterministic, schema-valid, skewed, with taste and sequential signal."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.data import Dataset, SyntheticConfig, generate_synthetic, leave_last_out
from training.data.synthetic import GENRE_WORDS, genre_names


@pytest.fixture(scope="module")
def default() -> Dataset:
    return generate_synthetic(SyntheticConfig())


def test_deterministic_given_the_seed() -> None:
    config = SyntheticConfig(n_users=100, n_items=300, seed=7)
    first, second = generate_synthetic(config), generate_synthetic(config)
    pd.testing.assert_frame_equal(first.interactions, second.interactions)
    pd.testing.assert_frame_equal(first.items, second.items)
    assert first.users is not None and second.users is not None
    pd.testing.assert_frame_equal(first.users, second.users)
    other = generate_synthetic(SyntheticConfig(n_users=100, n_items=300, seed=8))
    assert not first.interactions.equals(other.interactions)


def test_schema_and_sizes(default: Dataset) -> None:
    interactions = default.interactions
    assert list(interactions.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert interactions["rating"].dtype == "float32"
    assert interactions["timestamp"].dtype == "int64"
    assert pd.api.types.is_string_dtype(interactions["user_id"])
    assert interactions["user_id"].nunique() == 1000
    assert len(default.items) == 2000
    assert 50 <= len(interactions) / 1000 <= 70  # mean ≈ 60 events per user
    assert interactions.groupby("user_id").size().min() >= 3
    assert not interactions.duplicated(["user_id", "item_id"]).any()


def test_user_attributes(default: Dataset) -> None:
    assert default.users is not None
    assert default.user_attribute_columns == ("age_bucket", "gender", "occupation")
    assert len(default.users) == 1000
    assert set(default.users["gender"]) == {"M", "F"}


def test_popularity_is_power_law(default: Dataset) -> None:
    counts = default.interactions["item_id"].value_counts()
    top = counts.iloc[: len(default.items) // 10].sum()
    assert top / len(default.interactions) > 0.4


def test_cold_items_have_metadata_but_no_events(default: Dataset) -> None:
    used = set(default.interactions["item_id"])
    cold = [item for item in default.items["item_id"] if item not in used]
    assert len(cold) >= 100  # 5% of 2000 by default; a few more may be unpopular enough
    explicit = generate_synthetic(SyntheticConfig(n_users=50, n_items=100, n_cold_items=30))
    assert len(set(explicit.items["item_id"]) - set(explicit.interactions["item_id"])) >= 30


def test_timestamps_increase_per_user(default: Dataset) -> None:
    frame = default.interactions
    steps = frame.groupby("user_id")["timestamp"].diff().dropna()
    assert (steps > 0).all()
    assert frame["timestamp"].min() >= SyntheticConfig().start_timestamp


def test_ratings_are_whole_stars(default: Dataset) -> None:
    ratings = default.interactions["rating"]
    assert set(ratings.unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert ratings.nunique() >= 4


def test_titles_carry_genre_words(default: Dataset) -> None:
    primary = default.items["genres"].str.split("|").str[0]
    first_word = default.items["title"].str.split(" ").str[0]
    assert all(word in GENRE_WORDS[g] for word, g in zip(first_word, primary, strict=True))
    assert set(primary) == set(genre_names(12))


def _top_unseen(ranked: list[str], seen: set[str], k: int = 10) -> list[str]:
    out: list[str] = []
    for item in ranked:
        if item not in seen:
            out.append(item)
            if len(out) == k:
                break
    return out


def test_history_beats_popularity(default: Dataset) -> None:
    """Popular items of the last item's genre hit the held-out item far more than popularity."""
    split = leave_last_out(default.interactions)
    history = pd.concat([split.train, split.validation])
    history = history.sort_values(["user_id", "timestamp"], kind="stable")
    ranked = history["item_id"].value_counts().index.tolist()
    primary = default.items.set_index("item_id")["genres"].str.split("|").str[0]
    by_genre = {g: [i for i in ranked if primary[i] == g] for g in primary.unique()}
    seen = history.groupby("user_id")["item_id"].agg(set)
    last = history.groupby("user_id")["item_id"].last()
    popularity = sequential = 0
    for user, target in zip(split.test["user_id"], split.test["item_id"], strict=True):
        popularity += target in _top_unseen(ranked, seen[user])
        sequential += target in _top_unseen(by_genre[primary[last[user]]], seen[user])
    assert sequential > 2 * popularity


def test_large_catalogue() -> None:
    dataset = generate_synthetic(SyntheticConfig(n_users=200, n_items=200_000, seed=1))
    assert len(dataset.items) == 200_000
    assert dataset.items["item_id"].is_unique
    assert len(dataset.interactions) > 200 * 40


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_users": 0}, "n_users must be >= 1, got 0"),
        ({"interactions_per_user": 2}, "interactions_per_user must be >= 3, got 2"),
        ({"genre_stickiness": 1.0}, r"genre_stickiness must be in \[0, 1\), got 1.0"),
        ({"n_items": 20, "n_cold_items": 15}, r"n_cold_items must be in \[0, n_items - n_genres"),
    ],
)
def test_config_rejects_bad_values(overrides: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**overrides)  # type: ignore[arg-type]


def test_more_genres_than_named_ones() -> None:
    dataset = generate_synthetic(SyntheticConfig(n_users=20, n_items=200, n_genres=25))
    names = {g for v in dataset.items["genres"] for g in v.split("|")}
    assert "Genre25" in names
    assert np.all(dataset.items["title"].str.len() > 0)
