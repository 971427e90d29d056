"""Loads model bundles from disk into ready-to-run objects (ONNX Runtime sessions, FAISS index)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from recsys.errors import ArtifactError, IncompatibleModelsError, RankingError
from recsys.features import (
    DENSE_FEATURES,
    FeatureScaler,
    ItemCatalog,
    UserAttributeEncoder,
    user_tower_feeds,
)
from recsys.models import artifacts
from recsys.models.index import ItemIndex, item_query_nprobe, load_index
from recsys.models.neighbours import ItemNeighbours
from recsys.models.onnx_runtime import CPU, active_provider, create_session, providers
from recsys.models.policy import RankingPolicy

# Users a user tower call encodes at once: its activations grow with the batch, and ONNX
# Runtime's arena keeps what it once held (every user of a MovieLens 1M-sized set at once took
# the training process from 1.6 to over 5 GB). A row's vector does not depend on its batch.
USER_TOWER_CHUNK = 512


def _run_user_tower(session: ort.InferenceSession, history: npt.NDArray[np.int64],
                    attributes: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    if len(history) > USER_TOWER_CHUNK:
        return np.concatenate([_run_user_tower(session, history[i:i + USER_TOWER_CHUNK],
                                               attributes[i:i + USER_TOWER_CHUNK])
                               for i in range(0, len(history), USER_TOWER_CHUNK)])
    out = session.run(["user_vector"], user_tower_feeds(history, attributes))[0]
    return np.asarray(out, dtype=np.float32)


class UserEncoder(Protocol):
    def encode_users(self, history: npt.NDArray[np.int64],
                     attributes: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]: ...


def parity_tolerance(session: ort.InferenceSession, int8: bool = False) -> float:
    """Training checks its ONNX files on the CPU at PARITY_TOLERANCE; a GPU, or int8 kernels on
    another CPU than the one that made the file, may round differently."""
    on_gpu = active_provider(session) != CPU
    return artifacts.PARITY_TOLERANCE * (10 if on_gpu or int8 else 1)


def tower_parity(path: Path, tower: UserEncoder, session: ort.InferenceSession) -> float | None:
    """The user tower's output on the bundle's parity sample against training's; None without
    a sample."""
    sample = artifacts.load_parity(path, artifacts.USER_TOWER)
    if sample is None:
        return None
    feeds, expected = sample
    actual = tower.encode_users(feeds["history"], feeds["attributes"])
    return artifacts.check_parity(path, artifacts.USER_TOWER, actual, expected,
                                  parity_tolerance(session))


@dataclass(frozen=True)
class EmbeddingBundle:
    """The two-tower model as served: user tower session, item vectors, ANN index, catalogue."""

    path: Path
    manifest: artifacts.Manifest
    config: dict[str, Any]
    catalog: ItemCatalog
    attributes: UserAttributeEncoder
    user_tower: ort.InferenceSession | None  # None: loaded without it (a model service runs it)
    item_vectors: npt.NDArray[np.float32]  # [n+1, D], row 0 zeros
    index: ItemIndex
    users: artifacts.UserHistories | None
    # [n+1, K] int32: each item's nearest other items, precomputed at training; None: searched
    item_neighbours: npt.NDArray[np.int32] | None = None

    @property
    def history_len(self) -> int:
        return int(self.config["history_len"])

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint()

    @cached_property
    def neighbours(self) -> ItemNeighbours:
        """Each item's nearest other items: from the table when the bundle has one, else searched
        with the IVF probes training tuned for item queries (the manifest's index_item_nprobe).
        One object per bundle, shared by item-to-item retrieval and /similar_items."""
        return ItemNeighbours(self.index, item_query_nprobe(
            self.index, self.manifest.metadata.get("index_item_nprobe")), self.item_neighbours)

    def check_parity(self) -> float | None:
        """The loaded user tower's output on the bundle's parity sample against training's
        (ArtifactError above tolerance); None without a sample or a loaded tower."""
        return None if self.user_tower is None else \
            tower_parity(self.path, self, self.user_tower)

    def encode_users(self, history: npt.NDArray[np.int64],
                     attributes: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """[B, D] user vectors from padded histories [B, H] and attribute ids [B, A]."""
        if self.user_tower is None:
            raise ArtifactError(f"{self.path} was loaded without its user tower "
                                "(load_user_tower=False); the user tower service encodes users")
        return _run_user_tower(self.user_tower, history, attributes)

    @classmethod
    def load(cls, path: Path, *, threads: int = 1, prefer_gpu: bool | None = None,
             verify: bool = True, load_user_tower: bool = True) -> EmbeddingBundle:
        """`load_user_tower=False` skips the user tower's session (its history embedding is
        catalogue-sized: about 260 MiB at 1M items) where another process runs it."""
        manifest = artifacts.read_manifest(path, "embedding", verify=verify)
        vectors = np.load(path / artifacts.ITEM_VECTORS, allow_pickle=False)
        index = ItemIndex(load_index(path / artifacts.ITEM_INDEX, use_gpu=prefer_gpu), vectors,
                          threads=threads)
        neighbours = artifacts.load_item_neighbours(path)
        if neighbours is not None and len(neighbours) != len(vectors):
            raise ArtifactError(f"{path}: {artifacts.ITEM_NEIGHBOURS} has {len(neighbours)} rows "
                                f"for {len(vectors)} item vectors")
        return cls(
            path=path,
            manifest=manifest,
            config=artifacts.load_json(path / artifacts.CONFIG),
            catalog=artifacts.load_catalog(path),
            attributes=artifacts.load_user_attributes(path),
            user_tower=create_session(path / artifacts.USER_TOWER, intra_op_threads=threads,
                                      prefer_gpu=prefer_gpu) if load_user_tower else None,
            item_vectors=vectors,
            index=index,
            users=artifacts.load_user_histories(path),
            item_neighbours=neighbours,
        )


@dataclass(frozen=True)
class UserTowerBundle:
    """Only the user tower of an embedding bundle: what a user-tower model service needs.

    Loading the whole EmbeddingBundle there would also hold the item vectors, the index and the
    catalogue (measured at 1M items: 1,278 MiB for that process, most of it never used).
    """

    path: Path
    config: dict[str, Any]
    user_tower: ort.InferenceSession
    attributes: int  # A: attribute ids per user (one always-zero column when there are none)

    @property
    def history_len(self) -> int:
        return int(self.config["history_len"])

    def encode_users(self, history: npt.NDArray[np.int64],
                     attributes: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """[B, D] user vectors from padded histories [B, H] and attribute ids [B, A]."""
        return _run_user_tower(self.user_tower, history, attributes)

    def check_parity(self) -> float | None:
        """As EmbeddingBundle.check_parity, for a user tower served on its own."""
        return tower_parity(self.path, self, self.user_tower)

    @classmethod
    def load(cls, path: Path, *, threads: int = 1, prefer_gpu: bool | None = None,
             verify: bool = True) -> UserTowerBundle:
        artifacts.read_manifest(path, "embedding", verify=verify)
        return cls(path, artifacts.load_json(path / artifacts.CONFIG),
                   create_session(path / artifacts.USER_TOWER, intra_op_threads=threads,
                                  prefer_gpu=prefer_gpu),
                   attributes=len(artifacts.load_user_attributes(path).encode(None)))


@dataclass(frozen=True)
class RankerBundle:
    """A ranker (main or fallback) as served: features [N, F] → scores [N], higher first."""

    path: Path
    manifest: artifacts.Manifest
    config: dict[str, Any]
    scaler: FeatureScaler
    session: ort.InferenceSession
    output: str
    column: int | None  # for classifiers: the probability column of the positive class
    precision: str = "fp32"  # "int8" when the bundle's int8 ranker was loaded

    @property
    def embedding_fingerprint(self) -> str:
        return str(self.manifest.metadata.get("embedding_fingerprint", ""))

    @property
    def policy(self) -> RankingPolicy:
        """The path per history length that training chose on validation for this ranker."""
        return RankingPolicy.from_metadata(self.manifest.metadata)

    @property
    def onnx_file(self) -> str:
        return artifacts.RANKER_INT8 if self.precision == "int8" else artifacts.RANKER

    def check_parity(self) -> float | None:
        """The loaded model's scores on the bundle's parity sample against training's
        (ArtifactError above tolerance); None when the bundle has no sample."""
        sample = artifacts.load_parity(self.path, self.onnx_file)
        if sample is None:
            return None
        feeds, expected = sample
        return artifacts.check_parity(
            self.path, self.onnx_file, self.score(feeds["features"]), expected,
            parity_tolerance(self.session, int8=self.precision == "int8"))

    def score(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        try:
            out = self.session.run([self.output], {"features": features})[0]
        except Exception as error:  # onnxruntime raises its own pybind types; name them as ours
            raise RankingError(f"{self.path.name}: onnxruntime failed: {error}") from error
        scores = out[:, self.column] if self.column is not None else out
        if scores.shape != (len(features),):
            raise RankingError(f"{self.path.name}: ranker returned shape {scores.shape} "
                               f"for {len(features)} candidates")
        return np.asarray(scores, dtype=np.float32)

    @classmethod
    def load(cls, path: Path, kind: str = "ranker", *, threads: int = 1,
             prefer_gpu: bool | None = None, verify: bool = True,
             int8: bool = False) -> RankerBundle:
        """`int8`: serve the bundle's int8 ranker when it has one and the session runs on the
        CPU (its quantised ops are CPU kernels). Otherwise the fp32 model: bundles written
        before int8 existed and fallback rankers have none, and a GPU runs fp32."""
        manifest = artifacts.read_manifest(path, kind, verify=verify)
        on_cpu = providers(prefer_gpu)[0] == CPU
        precision = "int8" if int8 and on_cpu and (path / artifacts.RANKER_INT8).is_file() \
            else "fp32"
        model = path / (artifacts.RANKER_INT8 if precision == "int8" else artifacts.RANKER)
        session = create_session(model, intra_op_threads=threads, prefer_gpu=prefer_gpu)
        outputs = [o.name for o in session.get_outputs()]
        if "score" in outputs:
            output, column = "score", None
        elif "probabilities" in outputs:
            output, column = "probabilities", 1
        else:
            raise ArtifactError(f"{path}: ranker outputs {outputs}, expected 'score' or "
                                "'probabilities'")
        scaler = artifacts.load_scaler(path)
        expected = list(DENSE_FEATURES)
        trained = manifest.metadata.get("dense_features", f"{len(scaler.mean)} unnamed features")
        if trained != expected:
            raise ArtifactError(f"{path}: ranker was trained on dense features {trained}, this "
                                f"code builds {expected}; retrain or serve it with matching code")
        return cls(path, manifest, artifacts.load_json(path / artifacts.CONFIG), scaler, session,
                   output, column, precision)


def check_compatible(embedding: EmbeddingBundle, ranker: RankerBundle) -> None:
    """Raise IncompatibleModelsError unless the ranker was trained on this embedding model."""
    if ranker.embedding_fingerprint != embedding.fingerprint:
        raise IncompatibleModelsError(
            f"{ranker.path} was trained against embedding {ranker.embedding_fingerprint!r}, "
            f"but the embedding model loaded is {embedding.fingerprint!r}")
