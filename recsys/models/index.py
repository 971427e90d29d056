"""Approximate nearest-neighbour index over item vectors (FAISS, inner product) returning catalogue row ids."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import numpy.typing as npt

from recsys.errors import ArtifactError
from recsys.features import PAD

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
IndexKind = Literal["flat", "ivf", "hnsw"]
KINDS: tuple[str, ...] = ("flat", "ivf", "hnsw")

# IVF probes at least this share of the lists and at least this many items per query (so
# top-500 never runs short and small lists still cover a query's neighbourhood); see the
# table in training.index_build.choose_index_spec.
NPROBE_FRACTION = 1 / 64
MIN_SCANNED_ITEMS = 8192

# Largest k a GPU index can select (faiss GPU_MAX_SELECTION_K); larger k searches a CPU copy.
GPU_MAX_K = 2048


def want_gpu(use_gpu: bool | None) -> bool:
    has_gpu = faiss.get_num_gpus() > 0
    if use_gpu and not has_gpu:
        raise ValueError("use_gpu=True but faiss sees no GPU (faiss-cpu build or no device)")
    return has_gpu and use_gpu is not False


def is_on_gpu(index: faiss.Index) -> bool:
    gpu_class = getattr(faiss, "GpuIndex", None)
    if gpu_class is None:
        return False
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    return isinstance(inner, gpu_class)


def to_gpu(index: faiss.Index, device: int = 0) -> faiss.Index:
    resources = faiss.StandardGpuResources()
    gpu_index = faiss.index_cpu_to_gpu(resources, device, index)
    # index_cpu_to_gpu does not keep its resources alive; tie them to the index's lifetime.
    gpu_index.referenced_objects = [resources]  # type: ignore[attr-defined]
    return gpu_index


def to_cpu(index: faiss.Index) -> faiss.Index:
    return faiss.index_gpu_to_cpu(index) if is_on_gpu(index) else index


def save_index(index: faiss.Index, path: str | os.PathLike[str]) -> None:
    """Write the CPU form of `index` (a GPU index is copied back first); atomic via rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(to_cpu(index), str(tmp))
    tmp.replace(path)


def load_index(path: str | os.PathLike[str], use_gpu: bool | None = None) -> faiss.Index:
    """Read an index written by save_index; ArtifactError if the file is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"FAISS index file {path} does not exist")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise ArtifactError(f"FAISS index file {path} is corrupt or not a FAISS index: {exc}") from exc
    return to_gpu(index) if want_gpu(use_gpu) and index_kind(index) != "hnsw" else index


def index_kind(index: faiss.Index) -> IndexKind:
    """Which IndexSpec kind built `index` (CPU or GPU)."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    gpu_ivf = getattr(faiss, "GpuIndexIVF", None)
    if isinstance(inner, faiss.IndexIVF) or (gpu_ivf is not None and isinstance(inner, gpu_ivf)):
        return "ivf"
    return "flat"


class ItemIndex:
    """An ANN index together with the item vectors it was built from ([n+1, D], row 0 padding)."""

    def __init__(self, index: faiss.Index, vectors: FloatArray, *, threads: int = 1) -> None:
        """`threads` sets faiss's OpenMP thread count, which is process-wide.

        Serving default is 1: single-query search does not speed up with 2 threads on this
        2-core machine (see benchmarks/index_choice.py) and 1 leaves a core for the ranker.
        """
        check_vectors(vectors)
        if index.ntotal != vectors.shape[0] - 1 or index.d != vectors.shape[1]:
            raise ValueError(f"index holds {index.ntotal} x {index.d} vectors but vectors is "
                             f"{vectors.shape}; expected {vectors.shape[0] - 1} x {vectors.shape[1]}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        faiss.omp_set_num_threads(threads)
        self.index = index
        self.vectors = vectors
        self.kind: IndexKind = index_kind(index)
        self._on_gpu = is_on_gpu(index)
        self._cpu_copy: faiss.Index | None = None

    @classmethod
    def wrapping(cls, index: faiss.Index, vectors: FloatArray) -> ItemIndex:
        """A bare faiss index as an ItemIndex, for measuring it: faiss's process-wide thread
        count is left as it is (__init__ sets it)."""
        wrapper = cls.__new__(cls)
        wrapper.index, wrapper.vectors, wrapper.kind = index, vectors, index_kind(index)
        wrapper._on_gpu, wrapper._cpu_copy = is_on_gpu(index), None
        return wrapper

    @property
    def n_items(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, queries: FloatArray, k: int,
               nprobe: int | None = None) -> tuple[FloatArray, IntArray]:
        """Top-k items by inner product for each query row.

        `nprobe` overrides the IVF index's own for this call (CPU indexes; ignored by flat and
        HNSW indexes and on the GPU): item-to-item queries are item vectors, which sit in the
        lists they were clustered into and need far fewer probes than user vectors.

        queries: [B, D] float32. Returns (scores [B, k'] float32, ids [B, k'] int64) best first,
        with k' = min(k, n_items). ids are catalogue rows (1..n, never the padding row 0).
        id -1 means the approximate search reached fewer than k' items for that query (IVF:
        the probed lists held fewer; HNSW: efSearch too small); such slots sit at the end of
        the row with score -inf, so callers keep `ids >= 0`.
        """
        check_queries(queries, self.dim)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive int, got {k!r}")
        k = min(int(k), self.n_items)
        index = self._index_for(k)
        if nprobe is not None and self.kind == "ivf" and not is_on_gpu(index):
            params = faiss.SearchParametersIVF()
            params.nprobe = max(1, min(int(nprobe), self.nlist))
            scores, ids = index.search(np.ascontiguousarray(queries), k, params=params)
        else:
            scores, ids = index.search(np.ascontiguousarray(queries), k)
        missing = ids < 0
        if missing.any():
            scores[missing] = -np.inf
        return scores, ids

    def neighbours(self, rows: IntArray, k: int, nprobe: int | None = None) -> IntArray:
        """[len(rows), k] the k nearest *other* items of each catalogue row, best first (the
        row itself dropped where the search found it, else the k+1-th; with unnormalised
        vectors an item is not always its own nearest); slots the search could not fill are
        PAD. `nprobe` as in `search`."""
        _, ids = self.search(np.ascontiguousarray(self.vectors[rows]), k + 1, nprobe=nprobe)
        keep = ids != np.asarray(rows)[:, None]
        keep[keep.all(axis=1), -1] = False
        found = ids[keep].reshape(len(rows), -1)[:, :k]
        out = np.full((len(rows), k), PAD, dtype=np.int64)
        out[:, :found.shape[1]] = np.where(found > PAD, found, PAD)
        return out

    def _index_for(self, k: int) -> faiss.Index:
        if not self._on_gpu or k <= GPU_MAX_K:
            return self.index
        if self._cpu_copy is None:
            self._cpu_copy = to_cpu(self.index)
        return self._cpu_copy

    @property
    def nlist(self) -> int:
        self._require("ivf", "nlist")
        return int(self._native.nlist)

    @property
    def nprobe(self) -> int:
        self._require("ivf", "nprobe")
        return int(self._native.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self._require("ivf", "nprobe")
        if not 1 <= value <= self.nlist:
            raise ValueError(f"nprobe must be in [1, {self.nlist}], got {value}")
        self._set_parameter("nprobe", value)

    @property
    def ef_search(self) -> int:
        self._require("hnsw", "ef_search")
        return int(self._native.hnsw.efSearch)

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._require("hnsw", "ef_search")
        if value < 1:
            raise ValueError(f"ef_search must be >= 1, got {value}")
        self._set_parameter("efSearch", value)

    @property
    def _native(self) -> Any:
        """The IVF / HNSW index itself (under the IndexIDMap for HNSW), for its parameters."""
        if isinstance(self.index, faiss.IndexIDMap):
            return faiss.downcast_index(self.index.index)
        return self.index

    def _require(self, kind: str, parameter: str) -> None:
        if self.kind != kind:
            raise ValueError(f"{parameter} applies to {kind} indexes; this index is {self.kind}")

    def _set_parameter(self, name: str, value: int) -> None:
        space = faiss.GpuParameterSpace() if self._on_gpu else faiss.ParameterSpace()
        space.set_index_parameter(self.index, name, value)
        if self._cpu_copy is not None:
            faiss.ParameterSpace().set_index_parameter(self._cpu_copy, name, value)


def check_vectors(vectors: FloatArray) -> None:
    if not isinstance(vectors, np.ndarray) or vectors.dtype != np.float32 or vectors.ndim != 2:
        raise ValueError(f"vectors must be a float32 [n+1, D] array, got "
                         f"{getattr(vectors, 'dtype', type(vectors))} {getattr(vectors, 'shape', '')}")
    if vectors.shape[0] < 2 or vectors.shape[1] < 1:
        raise ValueError(f"vectors must hold the padding row and at least one item, got {vectors.shape}")
    if np.any(vectors[0]):
        raise ValueError("vectors row 0 must be the all-zero padding row")


def check_queries(queries: FloatArray, dim: int) -> None:
    if not isinstance(queries, np.ndarray) or queries.dtype != np.float32:
        raise ValueError(f"queries must be a float32 array, got "
                         f"{getattr(queries, 'dtype', type(queries).__name__)}")
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise ValueError(f"queries must have shape [B, {dim}], got {queries.shape}")


def default_nprobe(n_items: int, nlist: int) -> int:
    """IVF probes for `nlist` lists over `n_items` items: at least NPROBE_FRACTION of the lists
    and at least MIN_SCANNED_ITEMS items scanned per query, at most every list."""
    nprobe = max(round(nlist * NPROBE_FRACTION), math.ceil(MIN_SCANNED_ITEMS * nlist / n_items))
    return max(1, min(nlist, nprobe))


def item_query_nprobe(index: ItemIndex, tuned: int | None = None) -> int | None:
    """IVF probes for queries that are item vectors (item-to-item): `tuned` when training
    measured it (tune_item_nprobe, the manifest's `index_item_nprobe`), else the nprobe rule of
    training.index_build.choose_index_spec for this nlist (measured with queries drawn from the indexed
    distribution, as item vectors are); capped at the index's own nprobe (raised for user
    vectors by ensure_recall). None for flat and HNSW indexes."""
    if index.kind != "ivf":
        return None
    probes = tuned if tuned is not None else default_nprobe(index.n_items, index.nlist)
    return max(1, min(index.nprobe, int(probes)))
