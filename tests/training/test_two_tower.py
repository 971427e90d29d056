"""The two-tower model (training/two_tower.py) trained for real on a small synthetic dataset."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.features import PAD, encode_history, item_tower_feeds
from training import export
from training.config import SEQUENCE_TOWER, RankerHoldout, TwoTowerConfig
from training.data import SyntheticConfig, generate_synthetic
from training.evaluate import evaluate_scorer
from training.sequence_tower import ItemEmbedding, SequenceUserTower, Windows, sequence_windows
from training.sequences import UserSequences
from training.steps import PreparedData, fit_embedding, padded_histories, prepare_data
from training.two_tower import (
    Examples,
    PooledUserTower,
    SideBySide,
    TwoTowerModel,
    build_model,
    encode_items,
    encode_users,
    next_item_examples,
    train_two_tower,
    training_examples,
)

CONFIG = replace(SEQUENCE_TOWER, dim=16, hidden=32, epochs=2, history_len=8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass(frozen=True)
class Trained:
    data: PreparedData
    examples: Examples | Windows
    model: TwoTowerModel
    history: list[dict[str, float]]
    epochs_seen: list[int]
    items: np.ndarray  # [n+1, D]


def _train(data: PreparedData, examples: Examples | Windows, config: TwoTowerConfig,
           epochs_seen: list[int] | None = None) -> tuple[TwoTowerModel, list[dict[str, float]]]:
    model = build_model(data.catalog, data.attributes.cardinalities(), config)
    callback = (lambda epoch, stats: epochs_seen.append(epoch)) if epochs_seen is not None else None
    return model, train_two_tower(model, data.catalog, examples, callback)


@pytest.fixture(scope="module")
def data() -> PreparedData:
    return prepare_data(generate_synthetic(SyntheticConfig(n_users=150, n_items=300)), CONFIG)


@pytest.fixture(scope="module")
def examples(data: PreparedData) -> Windows:
    windows = training_examples(data.train, data.train_attributes, CONFIG)
    assert isinstance(windows, Windows)  # the sequence encoder trains on whole windows
    return windows


@pytest.fixture(scope="module")
def trained(data: PreparedData, examples: Windows) -> Trained:
    epochs_seen: list[int] = []
    model, history = _train(data, examples, CONFIG, epochs_seen)
    return Trained(data, examples, model, history, epochs_seen, encode_items(model, data.catalog))


# --- examples ------------------------------------------------------------------------------

def test_next_item_examples_leave_out_the_ranker_holdout() -> None:
    sequences = UserSequences(["u1", "u2"], [np.array([1, 2, 3, 4, 5]), np.array([6, 7])],
                              [np.arange(5), np.arange(2)])
    attributes = np.array([[1, 2], [3, 4]])
    examples = next_item_examples(sequences, attributes, history_len=3,
                                  holdout=RankerHoldout(2))
    # u1: targets 2, 3 (4 and 5 are held out); u2: none (its only target 7 is held out)
    np.testing.assert_array_equal(examples.target, [2, 3])
    np.testing.assert_array_equal(examples.history, [[0, 0, 1], [0, 1, 2]])
    np.testing.assert_array_equal(examples.attributes, [[1, 2], [1, 2]])
    everything = next_item_examples(sequences, attributes, history_len=3)
    np.testing.assert_array_equal(everything.target, [2, 3, 4, 5, 7])
    np.testing.assert_array_equal(everything.history[3], [2, 3, 4])  # the most recent 3


def test_next_item_examples_refuse_users_with_single_events() -> None:
    sequences = UserSequences(["u1"], [np.array([1])], [np.array([0])])
    with pytest.raises(ValueError, match="no training examples"):
        next_item_examples(sequences, np.zeros((1, 1), dtype=np.int64), history_len=4)
    with pytest.raises(ValueError, match="no training examples"):
        sequence_windows(sequences, np.zeros((1, 1), dtype=np.int64), length=4)


def test_sequence_windows_target_every_event_after_the_first_once_cut_from_the_end() -> None:
    sequences = UserSequences(["u1", "u2"], [np.arange(1, 10), np.array([6, 7, 8])],
                              [np.arange(9), np.arange(3)])
    attributes = np.array([[1, 2], [3, 4]])
    windows = sequence_windows(sequences, attributes, length=3, holdout=RankerHoldout(2))
    # u1 trains on 1..7 (8 and 9 are held out): targets 5-7, then 2-4; u2 keeps only its 6
    np.testing.assert_array_equal(windows.history, [[4, 5, 6], [1, 2, 3]])
    np.testing.assert_array_equal(windows.target, [[5, 6, 7], [2, 3, 4]])
    np.testing.assert_array_equal(windows.attributes, [[1, 2]] * 2)
    everything = sequence_windows(sequences, attributes, length=3)
    np.testing.assert_array_equal(everything.history[2:], [[0, 1, 2], [0, 6, 7]])  # left-padded
    targets = everything.target_rows()
    assert sorted(targets.tolist()) == sorted([*range(2, 10), 7, 8])
    # each target's history slot holds the event just before it
    real = everything.target != PAD
    before = {int(t): int(h) for t, h in zip(everything.target[real], everything.history[real])}
    assert before[9] == 8 and before[2] == 1 and before[8] in (7,)


def test_the_sequence_tower_is_causal_and_serves_its_last_state() -> None:
    config = replace(CONFIG, history_len=6)
    items = ItemEmbedding(20, 4, config)
    titles = torch.randint(1, config.title_buckets, (20, 3))
    tower = SequenceUserTower(items, torch.rand(20, 4), titles, [3], config).eval()
    history = torch.tensor([[0, 0, 3, 4, 5, 6], [0, 0, 3, 4, 5, 9], [0, 0, 0, 0, 0, 0]])
    attributes = torch.tensor([[1], [1], [2]])
    with torch.no_grad():
        states = tower.states(history, attributes)
        served = tower(history, attributes)
    torch.testing.assert_close(served, states[:, -1])
    # a different last item changes the last state only: no position reads the future
    torch.testing.assert_close(states[0, :5], states[1, :5])
    assert not torch.allclose(states[0, 5], states[1, 5])
    assert torch.isfinite(states).all()  # an empty history too


# --- training ------------------------------------------------------------------------------

def test_training_reduces_the_loss_and_reports_every_epoch(trained: Trained) -> None:
    assert trained.epochs_seen == [0, 1]
    assert len(trained.history) == 2
    assert trained.history[1]["loss"] < trained.history[0]["loss"]


def test_item_vectors_have_a_zero_padding_row_and_one_embedding_for_inputs_and_outputs(
    trained: Trained,
) -> None:
    items = trained.items
    assert items.shape == (trained.data.catalog.size + 1, CONFIG.dim)
    assert items.dtype == np.float32
    np.testing.assert_array_equal(items[PAD], 0.0)
    assert np.isfinite(items).all() and (np.linalg.norm(items[1:], axis=1) > 0).all()
    # the padding embeddings stay zero through training, so padding never leaks into vectors
    assert not trained.model.item_tower.item.weight[PAD].any()
    assert not trained.model.item_tower.title.weight[PAD].any()
    # SASRec ties the history items' embedding to the scored items' (one set of weights)
    assert trained.model.user_tower.items is trained.model.item_tower
    assert len(trained.model.parameters()) == len({id(p) for p in trained.model.parameters()})


def test_user_vectors_are_finite_even_for_an_empty_history(trained: Trained) -> None:
    data = trained.data
    history = padded_histories(data.validation, CONFIG.history_len)
    attributes = data.eval_attributes(data.validation)
    empty = np.zeros((1, CONFIG.history_len), dtype=np.int64)
    users = encode_users(trained.model, np.concatenate([history, empty]),
                         np.concatenate([attributes, attributes[:1]]))
    assert users.shape == (len(history) + 1, CONFIG.dim) and users.dtype == np.float32
    assert np.isfinite(users).all()


def test_same_seed_gives_identical_vectors_and_another_seed_does_not(
    data: PreparedData, examples: Windows,
) -> None:
    config = replace(CONFIG, epochs=1)
    first, _ = _train(data, examples, config)
    second, _ = _train(data, examples, config)
    other, _ = _train(data, examples, replace(config, seed=1))
    history, attributes = examples.history[:32], examples.attributes[:32]
    np.testing.assert_array_equal(encode_items(first, data.catalog),
                                  encode_items(second, data.catalog))
    np.testing.assert_array_equal(encode_users(first, history, attributes),
                                  encode_users(second, history, attributes))
    assert not np.allclose(encode_items(first, data.catalog), encode_items(other, data.catalog))


def test_cold_items_land_nearer_their_own_genre(trained: Trained) -> None:
    """Items never seen in training are placed by their content (genres, title words) alone."""
    catalog = trained.data.catalog
    counts = np.bincount(trained.examples.target_rows(), minlength=catalog.size + 1)
    cold = np.flatnonzero(catalog.popularity == 0)[1:]  # no training events at all (row 0 is PAD)
    warm = np.flatnonzero(counts > 0)
    assert len(cold) >= 10
    assert not trained.model.item_tower.item.weight[torch.from_numpy(cold)].any()  # id unknown
    same, other = [], []
    for row in cold:
        shares_genre = catalog.genres[warm] @ catalog.genres[row] > 0
        similarity = trained.items[warm] @ trained.items[row]
        same.append(similarity[shares_genre].mean())
        other.append(similarity[~shares_genre].mean())
    assert np.mean(same) > np.mean(other)
    assert np.mean(np.array(same) > np.array(other)) > 0.5  # for most cold items, not just on average


def test_the_user_vector_moves_when_an_event_is_appended(trained: Trained) -> None:
    data = trained.data
    sequence = next(s for s in data.train.sequences if len(s) >= 6)
    attributes = data.train_attributes[:1]
    before = encode_users(trained.model, encode_history(sequence[:5], CONFIG.history_len)[None],
                          attributes)
    after = encode_users(trained.model, encode_history(sequence[:6], CONFIG.history_len)[None],
                         attributes)
    assert np.linalg.norm(after - before) > 1e-3


def test_the_pooled_user_tower_still_trains_on_one_history_per_target(data: PreparedData) -> None:
    config = replace(CONFIG, user_encoder="pooled", softmax="sampled", temperature=0.05)
    examples = training_examples(data.train, data.train_attributes, config)
    assert isinstance(examples, Examples)
    model, history = _train(data, examples, config)
    assert isinstance(model.user_tower, PooledUserTower)
    assert history[1]["loss"] < history[0]["loss"]
    # its towers normalise: a cosine similarity, scaled by the temperature in training
    users = encode_users(model, examples.history[:32], examples.attributes[:32])
    np.testing.assert_allclose(np.linalg.norm(users, axis=1), 1.0, atol=1e-5)
    items = encode_items(model, data.catalog)
    np.testing.assert_allclose(np.linalg.norm(items[1:], axis=1), 1.0, atol=1e-5)


def test_an_unknown_user_encoder_is_refused_by_name(data: PreparedData) -> None:
    with pytest.raises(ValueError, match="user_encoder 'lstm'"):
        build_model(data.catalog, data.attributes.cardinalities(),
                    replace(CONFIG, user_encoder="lstm"))


def test_training_stops_when_the_callback_says_so(data: PreparedData, examples: Windows) -> None:
    seen: list[int] = []
    model = build_model(data.catalog, data.attributes.cardinalities(), replace(CONFIG, epochs=5))
    history = train_two_tower(model, data.catalog, examples,
                              lambda epoch, stats: seen.append(epoch) or epoch == 1)
    assert seen == [0, 1] and len(history) == 2


def test_members_trained_with_their_own_seeds_serve_as_one_model(
        data: PreparedData, tmp_path: Path) -> None:
    """members=2: two models with seeds 2 and 3 (seed 1 * 2 members + k), each kept at its best
    epoch, joined side by side. An item's score is the sum of the members' scores, the exported
    towers give the eager vectors, and the NDCG@10 returned is the joined model's."""
    config = replace(CONFIG, epochs=2, members=2, seed=1)
    model, _, ndcg = fit_embedding(data, config)
    assert isinstance(model.user_tower, SideBySide) and isinstance(model.item_tower, SideBySide)
    halves = [TwoTowerModel(u, i, config) for u, i in
              zip(model.user_tower.towers, model.item_tower.towers, strict=True)]
    history = padded_histories(data.validation, config.history_len)
    attributes = data.eval_attributes(data.validation)
    users, items = encode_users(model, history, attributes), encode_items(model, data.catalog)
    assert users.shape[1] == items.shape[1] == 2 * config.dim
    member_scores = [encode_users(m, history, attributes) @ encode_items(m, data.catalog).T
                     for m in halves]
    np.testing.assert_allclose(users @ items.T, sum(member_scores), rtol=1e-4, atol=1e-4)
    assert not np.allclose(*member_scores)  # two seeds, two models
    # the second member is the model seed 3 trains alone
    alone, _, _ = fit_embedding(data, replace(config, members=1, seed=3))
    np.testing.assert_array_equal(encode_items(alone, data.catalog),
                                  encode_items(halves[1], data.catalog))
    expected = evaluate_scorer(lambda p: users[p] @ items.T, data.validation, (10,))["ndcg@10"]
    assert ndcg == pytest.approx(expected)
    path = export.export_user_tower(model, tmp_path / "user_tower.onnx")
    feeds = {"history": history[:64], "attributes": attributes[:64]}
    assert export.check_parity(users[:64], export.onnx_outputs(path, feeds),
                               "joined user tower") <= export.PARITY_TOLERANCE
    path = export.export_item_tower(model, data.catalog.genres.shape[1], tmp_path / "item.onnx")
    assert export.check_parity(items[1:65], export.onnx_outputs(
        path, item_tower_feeds(data.catalog, np.arange(1, 65))), "joined item tower") \
        <= export.PARITY_TOLERANCE


def test_fewer_than_one_member_is_refused(data: PreparedData) -> None:
    with pytest.raises(ValueError, match="members must be at least 1"):
        fit_embedding(data, replace(CONFIG, members=0))
