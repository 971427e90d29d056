"""ONNX export (training/export.py): every exported model matches its source within tolerance."""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from recsys.features import item_tower_feeds
from training import export
from training.config import FallbackConfig, RankerConfig, TwoTowerConfig
from training.data import SyntheticConfig, generate_synthetic
from training.fallback import fallback_scores, train_fallback
from training.ranker import DCNRanker, build_queries, score, train_ranker
from training.steps import PreparedData, prepare_data
from training.two_tower import (
    TwoTowerModel,
    build_model,
    encode_items,
    encode_users,
    next_item_examples,
    train_two_tower,
    training_examples,
)

CONFIG = TwoTowerConfig(dim=16, hidden=32, epochs=1, history_len=8)
RANKER = RankerConfig(retrieval_candidates=50, hard_negatives=7, random_negatives=4, hidden=32,
                      epochs=1)
BATCHES = (1, 257)  # a single row and more rows than any example used at export time


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass(frozen=True)
class Exported:
    data: PreparedData
    model: TwoTowerModel
    history: np.ndarray  # real padded histories [N, H] from the training examples
    attributes: np.ndarray  # [N, A]
    ranker: DCNRanker
    fallback: LogisticRegression
    inputs: np.ndarray  # real ranker inputs [N, F]
    user_tower: Path
    item_tower: Path
    ranker_path: Path
    fallback_path: Path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    data = prepare_data(generate_synthetic(SyntheticConfig(n_users=150, n_items=300)), CONFIG)
    model = build_model(data.catalog, data.attributes.cardinalities(), CONFIG)
    examples = next_item_examples(data.train, data.train_attributes, CONFIG.history_len,
                                  CONFIG.ranker_holdout)
    train_two_tower(model, data.catalog, examples)
    items = encode_items(model, data.catalog)
    queries = build_queries(data.train, data.train_attributes, data.catalog, items,
                            functools.partial(encode_users, model), CONFIG.history_len,
                            CONFIG.ranker_holdout, RANKER)
    ranker, scaler = train_ranker(queries, items, RANKER)
    grouped = queries.inputs(items, scaler)
    fallback = train_fallback(grouped, FallbackConfig())
    inputs = grouped.reshape(-1, grouped.shape[-1])
    directory = tmp_path_factory.mktemp("onnx")
    n_features = inputs.shape[1]
    return Exported(
        data, model, examples.history, examples.attributes, ranker, fallback, inputs,
        export.export_user_tower(model, directory / "user_tower.onnx"),
        export.export_item_tower(model, data.catalog.genres.shape[1], directory / "item_tower.onnx"),
        export.export_ranker(ranker, n_features, directory / "ranker.onnx"),
        export.export_fallback(fallback, n_features, directory / "fallback.onnx"),
    )


def _rows(n: int, total: int, seed: int) -> np.ndarray:
    """n row positions in [0, total): all distinct when possible, repeated otherwise."""
    rng = np.random.default_rng(seed)
    return rng.choice(total, size=n, replace=n > total)


def _random_user_inputs(e: Exported, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n)
    history = rng.integers(0, e.data.catalog.size + 1, size=(n, CONFIG.history_len))
    history[0, :-1] = 0  # one user with a single event
    cards = e.data.attributes.cardinalities()
    attributes = np.stack([rng.integers(0, c, size=n) for c in cards], axis=1)
    return history.astype(np.int64), attributes.astype(np.int64)


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("source", ["real", "random"])
def test_user_tower_parity(exported: Exported, source: str, n: int) -> None:
    if source == "real":
        rows = _rows(n, len(exported.history), seed=n)
        history, attributes = exported.history[rows], exported.attributes[rows]
    else:
        history, attributes = _random_user_inputs(exported, n)
    expected = encode_users(exported.model, history, attributes)
    actual = export.onnx_outputs(exported.user_tower, {"history": history, "attributes": attributes})
    assert actual.shape == (n, CONFIG.dim)
    assert export.check_parity(expected, actual, "user tower") <= export.PARITY_TOLERANCE


def test_sequence_user_tower_parity(exported: Exported, tmp_path: Path) -> None:
    """The causal-attention user tower, trained an epoch: ONNX gives the eager model's vectors for
    real and random histories, full, short and empty ones, one row and many."""
    config = TwoTowerConfig(dim=16, hidden=32, epochs=1, history_len=8, user_encoder="sequence")
    data = exported.data
    model = build_model(data.catalog, data.attributes.cardinalities(), config)
    windows = training_examples(data.train, data.train_attributes, config)
    train_two_tower(model, data.catalog, windows)
    path = export.export_user_tower(model, tmp_path / "user_tower.onnx")
    random_history, attributes = _random_user_inputs(exported, 257)
    random_history[1] = 0  # an empty history: a new user
    for history in (windows.history[:257], random_history, random_history[:1]):
        feeds = {"history": history, "attributes": attributes[:len(history)]}
        expected = encode_users(model, *feeds.values())
        assert export.check_parity(expected, export.onnx_outputs(path, feeds),
                                   "sequence user tower") <= export.PARITY_TOLERANCE


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("source", ["real", "random"])
def test_item_tower_parity(exported: Exported, source: str, n: int) -> None:
    catalog = exported.data.catalog
    if source == "real":
        feeds = item_tower_feeds(catalog, 1 + _rows(n, catalog.size, seed=n))
    else:
        rng = np.random.default_rng(n)
        feeds = {"item": rng.integers(0, catalog.size + 1, size=n),
                 "genres": rng.random((n, catalog.genres.shape[1]), dtype=np.float32),
                 "title_tokens": rng.integers(0, CONFIG.title_buckets, size=(n, CONFIG.title_tokens))}
    with torch.no_grad():
        expected = exported.model.item_tower(
            *(torch.from_numpy(feeds[k]) for k in ("item", "genres", "title_tokens"))).numpy()
    actual = export.onnx_outputs(exported.item_tower, feeds)
    assert actual.shape == (n, CONFIG.dim)
    assert export.check_parity(expected, actual, "item tower") <= export.PARITY_TOLERANCE


def _ranker_inputs(e: Exported, source: str, n: int) -> np.ndarray:
    if source == "real":
        return np.ascontiguousarray(e.inputs[_rows(n, len(e.inputs), seed=n)])
    rng = np.random.default_rng(n)
    return rng.standard_normal((n, e.inputs.shape[1])).astype(np.float32)


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("source", ["real", "random"])
def test_ranker_parity(exported: Exported, source: str, n: int) -> None:
    features = _ranker_inputs(exported, source, n)
    actual = export.onnx_outputs(exported.ranker_path, {"features": features})
    assert actual.shape == (n,)
    diff = export.check_parity(score(exported.ranker, features), actual, "ranker")
    assert diff <= export.PARITY_TOLERANCE


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("source", ["real", "random"])
def test_fallback_parity(exported: Exported, source: str, n: int) -> None:
    features = _ranker_inputs(exported, source, n)
    probabilities = export.onnx_outputs(exported.fallback_path, {"features": features},
                                        "probabilities")
    assert probabilities.shape == (n, 2)
    diff = export.check_parity(fallback_scores(exported.fallback, features), probabilities[:, 1],
                               "fallback ranker")
    assert diff <= export.PARITY_TOLERANCE
    labels = export.onnx_outputs(exported.fallback_path, {"features": features}, "label")
    np.testing.assert_array_equal(labels, exported.fallback.predict(features))


def test_parity_check_fails_when_the_ranker_changes_after_export(exported: Exported) -> None:
    features = _ranker_inputs(exported, "real", 64)
    onnx_scores = export.onnx_outputs(exported.ranker_path, {"features": features})
    changed = copy.deepcopy(exported.ranker)
    with torch.no_grad():
        changed.head.weight[0, 0] += 0.05
    with pytest.raises(AssertionError, match="ranker: ONNX differs from the source model"):
        export.check_parity(score(changed, features), onnx_scores, "ranker")


def test_parity_check_fails_when_the_user_tower_changes_after_export(exported: Exported) -> None:
    history, attributes = exported.history[:32], exported.attributes[:32]
    onnx_vectors = export.onnx_outputs(exported.user_tower,
                                       {"history": history, "attributes": attributes})
    changed = copy.deepcopy(exported.model)
    with torch.no_grad():
        changed.user_tower.mlp[0].bias += 0.05
    with pytest.raises(AssertionError, match="user tower"):
        export.check_parity(encode_users(changed, history, attributes), onnx_vectors, "user tower")


def test_parity_check_fails_when_the_fallback_changes_after_export(exported: Exported) -> None:
    features = _ranker_inputs(exported, "real", 64)
    onnx_scores = export.onnx_outputs(exported.fallback_path, {"features": features},
                                      "probabilities")[:, 1]
    changed = copy.deepcopy(exported.fallback)
    changed.intercept_ = changed.intercept_ + 0.05
    with pytest.raises(AssertionError, match="fallback ranker"):
        export.check_parity(fallback_scores(changed, features), onnx_scores, "fallback ranker")


def test_parity_check_rejects_a_shape_mismatch_and_tolerates_tiny_differences() -> None:
    expected = np.zeros((4, 2), dtype=np.float32)
    with pytest.raises(AssertionError, match=r"shape \(4,\), expected \(4, 2\)"):
        export.check_parity(expected, np.zeros(4, dtype=np.float32), "item tower")
    assert export.check_parity(expected, expected + export.PARITY_TOLERANCE / 2, "x") > 0
    with pytest.raises(AssertionError, match="tolerance"):
        export.check_parity(expected, expected + export.PARITY_TOLERANCE * 2, "x")


def test_exports_carry_no_source_locations(exported: Exported) -> None:
    """The exporter's stack traces name this checkout's paths and line numbers: without them the
    same weights give the same bytes (and bundle fingerprint) from any checkout."""
    import onnx

    for path in (exported.user_tower, exported.item_tower, exported.ranker_path):
        model = onnx.load(str(path))
        keys = {p.key for node in model.graph.node for p in node.metadata_props}
        assert not any(key.endswith("stack_trace") for key in keys), (path.name, keys)
        assert b"training/two_tower.py" not in path.read_bytes()
        assert b"training/ranker.py" not in path.read_bytes()


def test_reexport_is_byte_identical(exported: Exported, tmp_path: Path) -> None:
    again = export.export_ranker(exported.ranker, exported.inputs.shape[1],
                                 tmp_path / "ranker.onnx")
    assert again.read_bytes() == exported.ranker_path.read_bytes()
