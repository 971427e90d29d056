"""Feature building shared by training and serving (recsys/features.py), and the no-skew guarantee."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, replace

import numpy as np
import pytest

from recsys.context import MAX_HOURS_SINCE_LAST_EVENT, Context, context_features
from recsys.features import (
    DENSE_FEATURES,
    RECENT_ITEMS,
    FeatureScaler,
    ItemCatalog,
    UserAttributeEncoder,
    dense_features,
    encode_history,
    ranker_inputs,
    tokenize_title,
    user_profile,
    user_ranker_inputs,
)
from recsys.follows import FollowTable
from training.config import RankerConfig, RankerHoldout, TwoTowerConfig
from training.data import SyntheticConfig, generate_synthetic
from training.ranker import RankingQueries, build_queries
from training.sequences import UserSequences
from training.steps import PreparedData, prepare_data
from training.two_tower import build_model, encode_items, encode_users

GENRES = ("action", "comedy", "drama")


def _catalog() -> ItemCatalog:
    """Four items: 1 action, 2 comedy, 3 action+comedy, 4 drama (row 0 is padding)."""
    genres = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=np.float32)
    titles = ["", "Fury", "Laughs", "Fury Laughs", "Tears"]
    return ItemCatalog(
        item_ids=np.array(["", "i1", "i2", "i3", "i4"], dtype=np.str_),
        titles=np.array(titles, dtype=np.str_),
        genre_vocab=GENRES,
        genres=genres,
        title_tokens=np.stack([tokenize_title(t, 64, 4) for t in titles]),
        popularity=np.array([0, 10, 3, 0, 1], dtype=np.float32),
        novelty=np.array([0, 0.25, 0.5, 1.0, 0.75], dtype=np.float32),
    )


@pytest.fixture
def catalog() -> ItemCatalog:
    return _catalog()


# --- tokenize_title ------------------------------------------------------------------------

def test_tokenize_title_hash_is_stable_across_processes_and_case_insensitive() -> None:
    # crc32-based, so these ids are the same in every process (Python's hash() would not be).
    expected = np.array([274, 29, 599, 0, 0])
    np.testing.assert_array_equal(tokenize_title("The Matrix (1999)", 1000, 5), expected)
    np.testing.assert_array_equal(tokenize_title("the MATRIX, 1999!", 1000, 5), expected)


def test_tokenize_title_pads_with_zero_and_keeps_ids_in_range() -> None:
    tokens = tokenize_title("Toy Story", 16, 6)
    assert tokens.dtype == np.int64 and tokens.shape == (6,)
    assert np.all((tokens[:2] >= 1) & (tokens[:2] < 16))
    np.testing.assert_array_equal(tokens[2:], 0)
    np.testing.assert_array_equal(tokenize_title("", 16, 3), [0, 0, 0])


def test_tokenize_title_truncates_to_the_first_tokens() -> None:
    long = tokenize_title("one two three four five", 1000, 3)
    np.testing.assert_array_equal(long, tokenize_title("one two three", 1000, 3))
    assert np.all(long > 0)


# --- encode_history ------------------------------------------------------------------------

def test_encode_history_left_pads_so_the_most_recent_is_last() -> None:
    np.testing.assert_array_equal(encode_history([7, 8, 9], 5), [0, 0, 7, 8, 9])
    np.testing.assert_array_equal(encode_history([], 3), [0, 0, 0])
    assert encode_history([1, 2], 0).shape == (0,)


def test_encode_history_keeps_only_the_most_recent_items() -> None:
    history = encode_history(np.arange(1, 11), 4)
    assert history.dtype == np.int64
    np.testing.assert_array_equal(history, [7, 8, 9, 10])


# --- UserAttributeEncoder ------------------------------------------------------------------

def test_attribute_encoder_maps_known_values_to_position_plus_one_and_unknown_to_zero() -> None:
    encoder = UserAttributeEncoder({"age": ("18-24", "25-34"), "gender": ("F", "M")})
    assert encoder.names == ("age", "gender")
    assert encoder.cardinalities() == [3, 3]
    np.testing.assert_array_equal(encoder.encode({"age": "25-34", "gender": "F"}), [2, 1])
    np.testing.assert_array_equal(encoder.encode({"age": "90+", "gender": "M"}), [0, 2])
    np.testing.assert_array_equal(encoder.encode({"gender": "F"}), [0, 1])
    np.testing.assert_array_equal(encoder.encode(None), [0, 0])


def test_empty_attribute_encoder_gives_one_zero_column() -> None:
    encoder = UserAttributeEncoder({})
    encoded = encoder.encode({"age": "25-34"})
    assert encoded.dtype == np.int64
    np.testing.assert_array_equal(encoded, [0])
    assert encoder.cardinalities() == []


# --- user_profile --------------------------------------------------------------------------

def test_user_profile_of_an_empty_history_is_all_zero(catalog: ItemCatalog) -> None:
    profile = user_profile(encode_history([], 4), catalog)
    assert profile.history_length == 0
    assert profile.recent.size == 0
    np.testing.assert_array_equal(profile.genre_profile, np.zeros(3))
    np.testing.assert_array_equal(profile.genre_recency, np.zeros(3))


def test_user_profile_is_the_normalised_mean_genre_vector(catalog: ItemCatalog) -> None:
    profile = user_profile(encode_history([1, 2, 3], 5), catalog)
    assert profile.history_length == 3
    np.testing.assert_array_equal(profile.recent, [1, 2, 3])
    expected = np.array([2, 2, 0]) / np.linalg.norm([2, 2, 0])
    np.testing.assert_allclose(profile.genre_profile, expected, rtol=1e-6)


def test_user_profile_keeps_the_most_recent_items_for_item_to_item_features(
    catalog: ItemCatalog,
) -> None:
    events = [4, 3, 2, 1, 2, 3, 4, 1, 2, 3][: RECENT_ITEMS + 3]
    profile = user_profile(encode_history(events, 12), catalog)
    assert profile.history_length == len(events)
    np.testing.assert_array_equal(profile.recent, events[-RECENT_ITEMS:])


def test_user_profile_recency_weighs_the_genre_seen_last_more(catalog: ItemCatalog) -> None:
    comedy_last = user_profile(encode_history([1, 2], 4), catalog)  # action, then comedy
    action_last = user_profile(encode_history([2, 1], 4), catalog)  # comedy, then action
    np.testing.assert_allclose(comedy_last.genre_recency, [0.9, 1.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(action_last.genre_recency, [1.0, 0.9, 0.0], rtol=1e-6)
    # the mean profile ignores order
    np.testing.assert_allclose(comedy_last.genre_profile, action_last.genre_profile)


# --- context_features ----------------------------------------------------------------------

def test_context_features_encode_hour_on_the_clock_and_device_one_hot() -> None:
    features = context_features([Context(hour=6, device="web"), Context(hour=0, device="tv"),
                                 Context(hour=18, device="mobile"), Context(hour=24)])
    assert features.shape == (4, 6) and features.dtype == np.float32
    np.testing.assert_allclose(features[0, :5], [1, 0, 1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(features[1, :5], [0, 1, 0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(features[2, :5], [-1, 0, 0, 1, 0], atol=1e-6)
    np.testing.assert_allclose(features[3, :5], features[1, :5] * [1, 1, 0, 0, 0],
                               atol=1e-6)  # 24 ≡ 0


def test_context_features_of_unknown_hour_and_device_are_zero() -> None:
    features = context_features([Context(), Context(hour=None, device="fridge")])
    np.testing.assert_array_equal(features[:, :5], np.zeros((2, 5)))


def test_hours_since_last_event_are_log_hours_capped_and_unknown_is_the_cap() -> None:
    gaps = [0.0, 3600.0, -5.0, 10 * 365 * 86400.0, None]
    features = context_features([Context(seconds_since_last_event=g) for g in gaps])[:, 5]
    cap = np.log1p(MAX_HOURS_SINCE_LAST_EVENT)
    np.testing.assert_allclose(features, [0.0, np.log1p(1.0), 0.0, cap, cap], rtol=1e-6)


# --- dense_features / ranker_inputs --------------------------------------------------------

def _vectors(n_rows: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n_rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[0] = 0.0
    return vectors


def test_dense_features_values_for_one_user(catalog: ItemCatalog) -> None:
    items = _vectors(5, 4)
    user = items[1:2]
    profile = user_profile(encode_history([1, 2], 4), catalog)  # action, then comedy
    candidates = np.array([1, 3, 4])
    dense = dense_features(user, profile, candidates, items, catalog,
                           context_features([Context(hour=6, device="mobile")]))
    assert dense.shape == (3, len(DENSE_FEATURES))
    column = {name: j for j, name in enumerate(DENSE_FEATURES)}
    np.testing.assert_allclose(dense[:, column["similarity"]], items[candidates] @ user[0], rtol=1e-6)
    np.testing.assert_allclose(dense[:, column["log_popularity"]], np.log1p([10, 0, 1]), rtol=1e-6)
    np.testing.assert_allclose(dense[:, column["novelty"]], [0.25, 1.0, 0.75])
    # profile is (1, 1, 0)/√2: item 1 (action) overlaps by 1/√2, item 3 (action+comedy) by 1, drama 0
    np.testing.assert_allclose(dense[:, column["category_affinity"]], [2**-0.5, 1.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(dense[:, column["category_recency"]], [0.9, 1.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(dense[:, column["history_length"]], np.log1p(2.0), rtol=1e-6)
    to_recent = items[candidates] @ items[[1, 2]].T  # cosine with each recent item (unit vectors)
    np.testing.assert_allclose(dense[:, column["recent_max_similarity"]], to_recent.max(axis=1),
                               rtol=1e-6)
    np.testing.assert_allclose(dense[:, column["recent_mean_similarity"]], to_recent.mean(axis=1),
                               rtol=1e-6)
    np.testing.assert_allclose(dense[:, column["device_mobile"]], 1.0)
    np.testing.assert_allclose(dense[:, column["hour_sin"]], 1.0, atol=1e-6)


def test_dense_features_carry_the_shares_that_followed_the_recent_items(
        catalog: ItemCatalog) -> None:
    # row 1 was followed by 3 in half of its events, row 2 by 3 in all and by 4 in a quarter
    follows = FollowTable(indptr=np.array([0, 0, 1, 3, 3, 3]), items=np.array([3, 3, 4]),
                          shares=np.array([0.5, 1.0, 0.25], dtype=np.float32))
    items = _vectors(5, 4)
    profile = user_profile(encode_history([1, 2], 4), catalog)
    context = context_features([Context(seconds_since_last_event=7200.0)])
    column = {name: j for j, name in enumerate(DENSE_FEATURES)}
    dense = dense_features(items[1], profile, np.array([3, 4, 1]), items,
                           replace(catalog, follows=follows), context)
    np.testing.assert_allclose(dense[:, column["recent_max_follow"]], [1.0, 0.25, 0.0])
    np.testing.assert_allclose(dense[:, column["recent_mean_follow"]], [0.75, 0.125, 0.0])
    np.testing.assert_allclose(dense[:, column["hours_since_last_event"]], np.log1p(2.0),
                               rtol=1e-6)
    without = dense_features(items[1], profile, np.array([3, 4, 1]), items, catalog, context)
    np.testing.assert_array_equal(without[:, [column["recent_max_follow"],
                                              column["recent_mean_follow"]]], 0.0)


def test_dense_features_of_many_candidates_equal_those_of_each_alone(catalog: ItemCatalog) -> None:
    items = _vectors(5, 4)
    user = _vectors(2, 4, seed=1)[1]
    profile = user_profile(encode_history([4, 3, 1], 5), catalog)
    context = context_features([Context(hour=21, device="tv")])
    candidates = np.array([1, 2, 3, 4, 2])
    together = dense_features(user, profile, candidates, items, catalog, context)
    alone = np.vstack([dense_features(user, profile, candidates[i:i + 1], items, catalog, context)
                       for i in range(len(candidates))])
    # one matrix product against one per candidate: equal up to float32 rounding
    np.testing.assert_allclose(together, alone, rtol=1e-6, atol=1e-7)
    # the caller's gathered candidate vectors give the same features
    np.testing.assert_array_equal(
        dense_features(user, profile, candidates, items, catalog, context, items[candidates]),
        together)


def test_dense_features_without_history_have_zero_recent_similarity(catalog: ItemCatalog) -> None:
    items = _vectors(5, 4)
    dense = dense_features(items[2], user_profile(encode_history([], 4), catalog),
                           np.array([1, 2, 3]), items, catalog, context_features([Context()]))
    column = {name: j for j, name in enumerate(DENSE_FEATURES)}
    for name in ("recent_max_similarity", "recent_mean_similarity", "category_affinity",
                 "category_recency", "history_length"):
        np.testing.assert_array_equal(dense[:, column[name]], 0.0)
    np.testing.assert_allclose(dense[:, column["similarity"]], items[[1, 2, 3]] @ items[2],
                               rtol=1e-6)


def test_feature_scaler_round_trips_through_json_and_never_divides_by_zero() -> None:
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((50, len(DENSE_FEATURES))).astype(np.float32)
    dense[:, 3] = 2.5  # a constant column
    scaler = FeatureScaler.fit(dense)
    assert scaler.std[3] == 1.0
    restored = FeatureScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    np.testing.assert_array_equal(restored.mean, scaler.mean)
    np.testing.assert_array_equal(restored.std, scaler.std)
    assert restored.mean.dtype == np.float32 and restored.std.dtype == np.float32
    scaled = (dense - restored.mean) / restored.std
    np.testing.assert_allclose(scaled.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.delete(scaled.std(axis=0), 3), 1.0, rtol=1e-4)


def test_user_ranker_inputs_equal_dense_features_plus_ranker_inputs(catalog: ItemCatalog) -> None:
    items = _vectors(5, 4)
    user = _vectors(3, 4, seed=2)[2]
    history = encode_history([2, 4], 6)
    candidates = np.array([3, 1, 4])
    context = Context(hour=13, device="web")
    dense = dense_features(user[None], user_profile(history, catalog), candidates, items, catalog,
                           context_features([context]))
    scaler = FeatureScaler(dense.mean(axis=0), np.full(len(DENSE_FEATURES), 2.0, np.float32))
    by_hand = np.concatenate([(dense - scaler.mean) / scaler.std, user[None] * items[candidates],
                              items[candidates]], axis=1)
    served = user_ranker_inputs(user, history, candidates, items, catalog, context, scaler)
    assert served.shape == (3, len(DENSE_FEATURES) + 2 * 4) and served.dtype == np.float32
    np.testing.assert_array_equal(served, ranker_inputs(dense, user[None], candidates, items, scaler))
    np.testing.assert_allclose(served, by_hand, rtol=1e-6, atol=1e-7)


# --- the training/serving no-skew guarantee ------------------------------------------------

@dataclass(frozen=True)
class TrainingQueries:
    data: PreparedData
    users: UserSequences  # users with >= 2 training events, one ranking query each
    attributes: np.ndarray
    item_vectors: np.ndarray
    queries: RankingQueries
    history_len: int


@pytest.fixture(scope="module")
def training_queries() -> TrainingQueries:
    config = TwoTowerConfig(dim=16, hidden=32, epochs=1, history_len=8)
    data = prepare_data(generate_synthetic(SyntheticConfig(n_users=150, n_items=300)), config)
    keep = [u for u, seq in enumerate(data.train.sequences) if len(seq) >= 2][:6]
    users = UserSequences([data.train.user_ids[u] for u in keep],
                          [data.train.sequences[u] for u in keep],
                          [data.train.timestamps[u] for u in keep])
    attributes = data.train_attributes[keep]
    model = build_model(data.catalog, data.attributes.cardinalities(), config)
    item_vectors = encode_items(model, data.catalog)
    ranker = RankerConfig(retrieval_candidates=40, hard_negatives=6, random_negatives=3)
    # holdout=1: exactly one query per user, for its last training event
    queries = build_queries(users, attributes, data.catalog, item_vectors,
                            functools.partial(encode_users, model), config.history_len,
                            RankerHoldout(1), ranker)
    return TrainingQueries(data, users, attributes, item_vectors, queries, config.history_len)


def test_serving_features_equal_the_training_path_for_the_same_user_and_candidates(
    training_queries: TrainingQueries,
) -> None:
    t = training_queries
    q, g, _ = t.queries.dense.shape
    assert q == len(t.users.user_ids) and g == 1 + 6 + 3
    scaler = FeatureScaler.fit(t.queries.dense.reshape(q * g, -1))
    trained_on = t.queries.inputs(t.item_vectors, scaler)
    for u, (seq, times) in enumerate(zip(t.users.sequences, t.users.timestamps)):
        history = encode_history(seq[:-1], t.history_len)
        assert t.queries.candidates[u, 0] == seq[-1]  # the positive is the held-out event
        served = user_ranker_inputs(t.queries.user_vectors[u], history, t.queries.candidates[u],
                                    t.item_vectors, t.data.catalog,
                                    Context(hour=int(times[-1] // 3600 % 24),
                                            seconds_since_last_event=float(times[-1] - times[-2])),
                                    scaler)
        np.testing.assert_array_equal(served, trained_on[u])
