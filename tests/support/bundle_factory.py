"""Small but real model bundles for tests: tiny ONNX graphs, a FAISS index, catalogue and manifest.

Usage::

    emb = make_embedding_bundle(tmp_path / "embedding")          # -> Manifest
    rnk = make_ranker_bundle(tmp_path / "ranker", emb.fingerprint())
    fb = make_ranker_bundle(tmp_path / "fallback", emb.fingerprint(), kind="fallback_ranker")
    feeds = input_example(tmp_path / "ranker")                    # dict[str, np.ndarray]

    with tracking_store(tmp_path / "mlflow") as uri:              # MLflow helpers, see below
        uris = log_model_set(tmp_path / "set0")                   # kind -> logged model URI

The graphs honour the serving contract (see recsys/artifacts.py): the user tower maps
``history`` int64 [B, H] and ``attributes`` int64 [B, A] to ``user_vector`` float32 [B, D]; the
item tower maps ``item`` int64 [B], ``genres`` float32 [B, G], ``title_tokens`` int64 [B, T] to
``item_vector`` float32 [B, D]; rankers map ``features`` float32 [N, F] to scores. The "ranker"
output is ``score`` [N]; the "fallback_ranker" output is ``variable`` [N, 1], as skl2onnx names
and shapes a scikit-learn regressor's output, so consumers must read output names from the session.
Same arguments give the same weights; catalog.npz embeds zip timestamps, so fingerprints differ.
"""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from recsys.features import (
    DENSE_FEATURES,
    FeatureScaler,
    ItemCatalog,
    UserAttributeEncoder,
    tokenize_title,
)
from recsys.models import artifacts
from recsys.models.artifacts import Manifest

OPSET = 18
IR_VERSION = 9  # readable by every onnxruntime >= 1.16
GENRES = ("action", "comedy", "drama", "horror")
USER_ATTRIBUTES = {"age": ("18-24", "25-34", "35-49", "50+"), "gender": ("f", "m")}
TITLE_TOKENS = 4
TITLE_BUCKETS = 64
DEFAULT_DIM = 8
RANKER_FEATURES = len(DENSE_FEATURES) + 2 * DEFAULT_DIM  # ranker input width for dim=8


def _weights(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.standard_normal(shape) * 0.5).astype(np.float32)


def _save_model(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="tests.support.bundle_factory")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path))


def _normalise_nodes(raw: str, out: str) -> list[onnx.NodeProto]:
    """out = raw / (||raw||_2 + eps) along axis 1."""
    return [
        helper.make_node("ReduceL2", [raw, "axis1"], [f"{raw}_norm"], keepdims=1),
        helper.make_node("Add", [f"{raw}_norm", "eps"], [f"{raw}_safe_norm"]),
        helper.make_node("Div", [raw, f"{raw}_safe_norm"], [out]),
    ]


def _shared_constants() -> list[onnx.TensorProto]:
    return [numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(np.array(1e-6, dtype=np.float32), "eps")]


def user_tower_graph(item_table: np.ndarray, attribute_weights: np.ndarray) -> onnx.GraphProto:
    """mean(item_table[history]) + float(attributes) @ W, L2-normalised."""
    dim = item_table.shape[1]
    nodes = [
        helper.make_node("Gather", ["item_table", "history"], ["history_vectors"], axis=0),
        helper.make_node("ReduceMean", ["history_vectors", "axis1"], ["history_mean"], keepdims=0),
        helper.make_node("Cast", ["attributes"], ["attributes_float"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["attributes_float", "attribute_weights"], ["attribute_part"]),
        helper.make_node("Add", ["history_mean", "attribute_part"], ["user_raw"]),
        *_normalise_nodes("user_raw", "user_vector"),
    ]
    return helper.make_graph(
        nodes, "user_tower",
        inputs=[helper.make_tensor_value_info("history", TensorProto.INT64, ["batch", "history_len"]),
                helper.make_tensor_value_info("attributes", TensorProto.INT64,
                                              ["batch", attribute_weights.shape[0]])],
        outputs=[helper.make_tensor_value_info("user_vector", TensorProto.FLOAT, ["batch", dim])],
        initializer=[numpy_helper.from_array(item_table, "item_table"),
                     numpy_helper.from_array(attribute_weights, "attribute_weights"),
                     *_shared_constants()],
    )


def item_tower_graph(item_table: np.ndarray, genre_weights: np.ndarray,
                     token_table: np.ndarray) -> onnx.GraphProto:
    """item_table[item] + genres @ W + mean(token_table[title_tokens]), L2-normalised."""
    dim = item_table.shape[1]
    nodes = [
        helper.make_node("Gather", ["item_table", "item"], ["id_part"], axis=0),
        helper.make_node("MatMul", ["genres", "genre_weights"], ["genre_part"]),
        helper.make_node("Gather", ["token_table", "title_tokens"], ["token_vectors"], axis=0),
        helper.make_node("ReduceMean", ["token_vectors", "axis1"], ["title_part"], keepdims=0),
        helper.make_node("Add", ["id_part", "genre_part"], ["id_genre"]),
        helper.make_node("Add", ["id_genre", "title_part"], ["item_raw"]),
        *_normalise_nodes("item_raw", "item_vector"),
    ]
    return helper.make_graph(
        nodes, "item_tower",
        inputs=[helper.make_tensor_value_info("item", TensorProto.INT64, ["batch"]),
                helper.make_tensor_value_info("genres", TensorProto.FLOAT,
                                              ["batch", genre_weights.shape[0]]),
                helper.make_tensor_value_info("title_tokens", TensorProto.INT64,
                                              ["batch", "title_len"])],
        outputs=[helper.make_tensor_value_info("item_vector", TensorProto.FLOAT, ["batch", dim])],
        initializer=[numpy_helper.from_array(item_table, "item_table"),
                     numpy_helper.from_array(genre_weights, "genre_weights"),
                     numpy_helper.from_array(token_table, "token_table"),
                     *_shared_constants()],
    )


def ranker_graph(weights: np.ndarray, bias: float, output: str = "score",
                 squeeze: bool = True) -> onnx.GraphProto:
    """features @ w + b: shape [N] when squeeze, else [N, 1] (skl2onnx style)."""
    nodes = [helper.make_node("MatMul", ["features", "weights"], ["linear"]),
             helper.make_node("Add", ["linear", "bias"], ["raw_score" if squeeze else output])]
    if squeeze:
        nodes.append(helper.make_node("Squeeze", ["raw_score", "axis1"], [output]))
    out_shape: list[str | int] = ["n"] if squeeze else ["n", 1]
    return helper.make_graph(
        nodes, "ranker",
        inputs=[helper.make_tensor_value_info("features", TensorProto.FLOAT,
                                              ["n", weights.shape[0]])],
        outputs=[helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)],
        initializer=[numpy_helper.from_array(weights, "weights"),
                     numpy_helper.from_array(np.array([bias], dtype=np.float32), "bias"),
                     *([numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")]
                       if squeeze else [])],
    )


def make_catalog(n_items: int, seed: int = 0) -> ItemCatalog:
    """n_items items "i1".."in" with random genres, hashed titles, popularity and novelty."""
    rng = np.random.default_rng(seed)
    titles = [""] + [f"Movie {i} {GENRES[i % len(GENRES)]} story" for i in range(1, n_items + 1)]
    genres = (rng.random((n_items + 1, len(GENRES))) < 0.4).astype(np.float32)
    genres[np.arange(1, n_items + 1), np.arange(n_items) % len(GENRES)] = 1.0
    genres[0] = 0.0
    popularity = rng.integers(1, 500, n_items + 1).astype(np.float32)
    popularity[0] = 0.0
    novelty = rng.random(n_items + 1).astype(np.float32)
    novelty[0] = 0.0
    return ItemCatalog(
        item_ids=np.array([""] + [f"i{i}" for i in range(1, n_items + 1)], dtype=np.str_),
        titles=np.array(titles, dtype=np.str_),
        genre_vocab=GENRES,
        genres=genres,
        title_tokens=np.stack([tokenize_title(t, TITLE_BUCKETS, TITLE_TOKENS) for t in titles]),
        popularity=popularity,
        novelty=novelty,
    )


def _item_vectors(tower: Path, catalog: ItemCatalog) -> np.ndarray:
    """[n+1, D] float32 from the real item tower; row 0 (padding) is zeros."""
    session = ort.InferenceSession(str(tower), providers=["CPUExecutionProvider"])
    rows = np.arange(catalog.size + 1, dtype=np.int64)
    vectors = session.run(["item_vector"], {
        "item": rows, "genres": catalog.genres[rows], "title_tokens": catalog.title_tokens[rows],
    })[0].astype(np.float32)
    vectors[0] = 0.0
    return vectors


def make_embedding_bundle(directory: Path, n_items: int = 50, dim: int = DEFAULT_DIM,
                          history_len: int = 5, seed: int = 0) -> Manifest:
    """Write a complete "embedding" bundle into `directory` (created; should be empty).

    Items are catalogue rows 1..n_items (row 0 pads); the FAISS index is an IndexIDMap over an
    IndexFlatIP holding the item tower's vectors with ids 1..n_items. Users have two attributes
    (age, gender), so A = 2. Returns the manifest (``.fingerprint()`` for rankers).
    """
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    catalog = make_catalog(n_items, seed)
    item_table = _weights(rng, n_items + 1, dim)
    item_table[0] = 0.0
    _save_model(user_tower_graph(item_table, _weights(rng, len(USER_ATTRIBUTES), dim)),
                directory / artifacts.USER_TOWER)
    _save_model(item_tower_graph(item_table, _weights(rng, len(GENRES), dim),
                                 _weights(rng, TITLE_BUCKETS, dim)),
                directory / artifacts.ITEM_TOWER)
    vectors = _item_vectors(directory / artifacts.ITEM_TOWER, catalog)
    np.save(directory / artifacts.ITEM_VECTORS, vectors)
    index = faiss.IndexIDMap(faiss.IndexFlatIP(dim))
    index.add_with_ids(vectors[1:], np.arange(1, n_items + 1, dtype=np.int64))
    faiss.write_index(index, str(directory / artifacts.ITEM_INDEX))
    artifacts.save_catalog(directory, catalog)
    artifacts.save_user_attributes(directory, UserAttributeEncoder(USER_ATTRIBUTES))
    config = {"dim": dim, "history_len": history_len, "n_items": n_items,
              "title_tokens": TITLE_TOKENS, "title_buckets": TITLE_BUCKETS,
              "n_attributes": len(USER_ATTRIBUTES), "seed": seed}
    artifacts.save_json(directory / artifacts.CONFIG, config)
    return artifacts.write_manifest(directory, "embedding", metadata=config)


def make_ranker_bundle(directory: Path, embedding_fingerprint: str,
                       n_features: int = RANKER_FEATURES, kind: str = "ranker",
                       seed: int = 0) -> Manifest:
    """Write a "ranker" or "fallback_ranker" bundle into `directory` (created; should be empty).

    The model is linear over `n_features` float32 inputs (default: 11 dense features plus
    2 x dim 8). The manifest metadata records `embedding_fingerprint` and `n_features`.
    """
    if kind not in ("ranker", "fallback_ranker"):
        raise ValueError(f"kind must be 'ranker' or 'fallback_ranker', got {kind!r}")
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1000)
    graph = (ranker_graph(_weights(rng, n_features, 1), 0.1) if kind == "ranker"
             else ranker_graph(_weights(rng, n_features, 1), -0.1, "variable", squeeze=False))
    _save_model(graph, directory / artifacts.RANKER)
    n_dense = len(DENSE_FEATURES)
    artifacts.save_scaler(directory, FeatureScaler(np.zeros(n_dense, np.float32),
                                                   np.ones(n_dense, np.float32)))
    config = {"n_features": n_features, "kind": kind, "seed": seed}
    artifacts.save_json(directory / artifacts.CONFIG, config)
    return artifacts.write_manifest(
        directory, kind, metadata={"embedding_fingerprint": embedding_fingerprint,
                                   "n_features": n_features,
                                   "dense_features": list(DENSE_FEATURES)})


def input_example(directory: Path, batch: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """Model inputs for a bundle made here: history/attributes (embedding) or features (rankers)."""
    manifest = artifacts.read_manifest(directory, verify=False)
    meta = manifest.metadata
    rng = np.random.default_rng(seed)
    if manifest.kind == "embedding":
        return {"history": rng.integers(0, meta["n_items"] + 1, (batch, meta["history_len"]),
                                        dtype=np.int64),
                "attributes": rng.integers(0, 3, (batch, meta["n_attributes"]), dtype=np.int64)}
    return {"features": rng.standard_normal((batch, meta["n_features"])).astype(np.float32)}


# --- MLflow helpers (import mlflow lazily: most users of this module only need bundles) -------

@contextmanager
def tracking_store(directory: Path) -> Iterator[str]:
    """A fresh local MLflow store (sqlite + mlartifacts) under `directory`, made active.

    Yields the tracking URI. MLflow keeps the tracking URI, active experiment and their
    environment variables in process globals; all are restored on exit.
    """
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from registry import configure_tracking

    with pytest.MonkeyPatch.context() as patch:
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID",
                    "MLFLOW_EXPERIMENT_NAME"):
            patch.delenv(var, raising=False)
        patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        patch.setattr(tracking_utils, "_tracking_uri", None)
        patch.setattr(registry_utils, "_registry_uri", None)
        patch.setattr(fluent, "_active_experiment_id", None)
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_empty_store(), directory / "mlruns.db")
        yield configure_tracking(store_dir=directory)


@functools.cache
def _empty_store() -> Path:
    """An MLflow sqlite database with every migration applied, made once per process: the
    migrations take seconds, a copy milliseconds."""
    import mlflow

    directory = Path(tempfile.mkdtemp(prefix="recsys-mlflow-template-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    path = directory / "mlruns.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def log_model_set(directory: Path, seed: int = 0) -> dict[str, str]:
    """Make an embedding, ranker and fallback bundle under `directory` and log them in one run
    of the active experiment (see tracking_store). Returns kind -> MLflow model URI, in the
    order register_model_set takes them (embedding, ranker, fallback_ranker)."""
    import mlflow

    from registry import log_bundle

    embedding = make_embedding_bundle(directory / "embedding", seed=seed)
    make_ranker_bundle(directory / "ranker", embedding.fingerprint(), seed=seed)
    make_ranker_bundle(directory / "fallback", embedding.fingerprint(), kind="fallback_ranker",
                       seed=seed)
    bundles = {"embedding": "embedding", "ranker": "ranker", "fallback_ranker": "fallback"}
    with mlflow.start_run(run_name=f"test-set-{seed}"):
        return {kind: log_bundle(directory / sub, kind, input_example(directory / sub))
                for kind, sub in bundles.items()}
