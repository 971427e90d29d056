"""Building the runtime ItemCatalog and user-attribute encoder from a dataset (training/catalog.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.features import PAD, tokenize_title
from training.catalog import (
    NO_GENRE,
    build_attribute_encoder,
    build_catalog,
    genre_vocabulary,
    user_attribute_matrix,
)
from training.data import SyntheticConfig, generate_synthetic, leave_last_out, validate
from training.data.schema import Dataset

BUCKETS = 128
TOKENS = 6


def _dataset(genres: tuple[str, ...] = ("Action|Comedy", "Comedy", "Drama", "Action"),
             with_users: bool = True) -> Dataset:
    """Items i1-i4 (i4 is cold: metadata, no interactions); u1-u3 with a few events each."""
    items = pd.DataFrame({
        "item_id": ["i1", "i2", "i3", "i4"],
        "title": ["Fury Laughs", "Mixup", "Tears", "Chase"],
        "genres": list(genres),
        "description": ["", "", "", "a car chase"],
    })
    interactions = pd.DataFrame({
        "user_id": ["u1", "u1", "u2", "u2", "u3", "u1"],
        "item_id": ["i1", "i2", "i1", "i3", "i2", "i3"],
        "rating": [4.0, 3.0, 5.0, 2.0, 4.0, 5.0],
        "timestamp": [100, 200, 150, 300, 50, 400],
    })
    users = pd.DataFrame({"user_id": ["u1", "u2", "u3"], "gender": ["F", "M", "F"],
                          "age": ["25-34", "18-24", "56+"]}) if with_users else None
    dataset, _ = validate(Dataset("hand", interactions, items, users))
    return dataset


def _train(dataset: Dataset) -> pd.DataFrame:
    """Every event except u1's last (i3 at t=400), which training must not see."""
    return dataset.interactions[dataset.interactions["timestamp"] < 400]


def test_every_item_with_metadata_gets_a_row_cold_items_included() -> None:
    dataset = _dataset()
    catalog = build_catalog(dataset, _train(dataset), BUCKETS, TOKENS)
    assert catalog.size == 4
    assert catalog.item_ids.tolist() == ["", "i1", "i2", "i3", "i4"]
    rows = catalog.index_lookup()
    assert rows == {"i1": 1, "i2": 2, "i3": 3, "i4": 4} and PAD not in rows.values()
    assert catalog.titles[rows["i4"]] == "Chase"
    np.testing.assert_array_equal(catalog.title_tokens[rows["i4"]],
                                  tokenize_title("Chase a car chase", BUCKETS, TOKENS))
    assert catalog.genre_vocab == ("Action", "Comedy", "Drama")
    np.testing.assert_array_equal(catalog.genres, [[0, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1],
                                                   [1, 0, 0]])
    np.testing.assert_array_equal(catalog.title_tokens[PAD], 0)


def test_popularity_counts_come_from_the_training_events_only() -> None:
    dataset = _dataset()
    catalog = build_catalog(dataset, _train(dataset), BUCKETS, TOKENS)
    # i3 has two events in the dataset, but the one at t=400 is not in train
    np.testing.assert_array_equal(catalog.popularity, [0, 2, 2, 1, 0])


def test_the_served_popular_order_counts_every_training_event() -> None:
    dataset = _dataset()
    # the ranker's features count the events before its held-out queries (here: i1's two
    # events held out); the popular order the service shows counts them all
    train = _train(dataset)
    features = train[~train["timestamp"].isin([100, 150])]
    catalog = build_catalog(dataset, features, BUCKETS, TOKENS, served=train)
    np.testing.assert_array_equal(catalog.popularity, [0, 0, 2, 1, 0])
    np.testing.assert_array_equal(catalog.served_popularity, [0, 2, 2, 1, 0])
    np.testing.assert_array_equal(catalog.popular_rows, [1, 2, 3, 4])
    restored = type(catalog).from_arrays(catalog.to_arrays())
    np.testing.assert_array_equal(restored.served_popularity, [0, 2, 2, 1, 0])
    # a catalogue written before the served counts shows its feature counts' order
    before = {k: v for k, v in catalog.to_arrays().items() if k != "served_counts"}
    old = type(catalog).from_arrays(before)
    assert old.served_counts is None
    np.testing.assert_array_equal(old.served_popularity, [0, 0, 2, 1, 0])
    np.testing.assert_array_equal(old.popular_rows, [2, 3, 1, 4])


def test_novelty_is_the_first_seen_percentile_and_unseen_items_are_newest() -> None:
    dataset = _dataset()
    catalog = build_catalog(dataset, _train(dataset), BUCKETS, TOKENS)
    # first seen in train: i2 t=50, i1 t=100, i3 t=300; i4 never
    np.testing.assert_allclose(catalog.novelty, [0.0, 2 / 3, 1 / 3, 1.0, 1.0], rtol=1e-6)


def test_genre_vocabulary_falls_back_to_a_single_none_genre() -> None:
    dataset = _dataset(genres=("", "", "", ""))
    assert genre_vocabulary(dataset.items) == (NO_GENRE,)
    catalog = build_catalog(dataset, _train(dataset), BUCKETS, TOKENS)
    assert catalog.genre_vocab == (NO_GENRE,)
    assert catalog.genres.shape == (5, 1)
    np.testing.assert_array_equal(catalog.genres, 0.0)


def test_catalog_survives_the_array_round_trip() -> None:
    dataset = _dataset()
    catalog = build_catalog(dataset, _train(dataset), BUCKETS, TOKENS)
    restored = type(catalog).from_arrays(catalog.to_arrays())
    assert restored.genre_vocab == catalog.genre_vocab
    for name, values in catalog.to_arrays().items():
        np.testing.assert_array_equal(restored.to_arrays()[name], values)


def test_attribute_encoder_and_matrix_follow_the_users_table() -> None:
    dataset = _dataset()
    encoder = build_attribute_encoder(dataset)
    assert dict(encoder.vocabularies) == {"gender": ("F", "M"), "age": ("18-24", "25-34", "56+")}
    matrix = user_attribute_matrix(dataset, encoder, ["u2", "u1", "nobody"])
    np.testing.assert_array_equal(matrix, [[2, 1], [1, 2], [0, 0]])


def test_dataset_without_users_gets_an_empty_encoder_and_one_zero_column() -> None:
    dataset = _dataset(with_users=False)
    encoder = build_attribute_encoder(dataset)
    assert encoder.names == ()
    matrix = user_attribute_matrix(dataset, encoder, ["u1", "u2"])
    assert matrix.shape == (2, 1) and matrix.dtype == np.int64
    np.testing.assert_array_equal(matrix, 0)


@pytest.fixture(scope="module")
def synthetic() -> Dataset:
    return generate_synthetic(SyntheticConfig(n_users=150, n_items=300))


def test_synthetic_cold_items_have_rows_zero_popularity_and_full_novelty(synthetic: Dataset) -> None:
    train = leave_last_out(synthetic.interactions).train
    catalog = build_catalog(synthetic, train, BUCKETS, TOKENS)
    assert catalog.size == len(synthetic.items) == 300
    rows = catalog.index_lookup()
    cold = sorted(set(synthetic.items["item_id"]) - set(synthetic.interactions["item_id"]))
    assert len(cold) == SyntheticConfig(n_users=150, n_items=300).cold_items
    cold_rows = [rows[item] for item in cold]
    np.testing.assert_array_equal(catalog.popularity[cold_rows], 0)
    np.testing.assert_array_equal(catalog.novelty[cold_rows], 1.0)
    assert catalog.genres[cold_rows].sum(axis=1).min() >= 1  # content features for cold items
    assert catalog.popularity.sum() == len(train)


def test_what_followed_each_item_counts_the_training_events_in_time_order() -> None:
    """u1: i1 (100) then i2 (200), its i3 (400) left out; u2: i1 (150) then i3 (300); u3: i2."""
    dataset = _dataset()
    catalog = build_catalog(dataset, _train(dataset), BUCKETS, TOKENS)
    assert catalog.follows is not None
    rows = catalog.index_lookup()
    shares = catalog.follows.shares_after(np.array([rows["i1"], rows["i2"], rows["i3"]]),
                                          np.array([rows["i1"], rows["i2"], rows["i3"]]))
    # i1's two events were followed once by i2 and once by i3; i2 (u1's, then u3's) by nothing
    # training saw (u1's i3 came after the cut); i3 by nothing
    np.testing.assert_allclose(shares, [[0.0, 0.5, 0.5], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
