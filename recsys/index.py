"""Approximate nearest-neighbour index over item vectors (FAISS, inner product) returning catalogue row ids."""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import faiss
import numpy as np
import numpy.typing as npt

from recsys.errors import ArtifactError

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
IndexKind = Literal["flat", "ivf", "hnsw"]
KINDS: tuple[str, ...] = ("flat", "ivf", "hnsw")

# Largest k a GPU index can select (faiss GPU_MAX_SELECTION_K); larger k searches a CPU copy.
GPU_MAX_K = 2048
# Exact search while n_items * dim stays below this (50K items at 64 dims, ~0.4 ms per query).
FLAT_MAX_CELLS = 50_000 * 64
# IVF k-means: at most 40 vectors per centroid (faiss warns below 39) and 10 iterations.
# 1M items / 4096 lists, 2 threads, quiet machine: ~16 s to build (train + add) against ~80 s
# with 64 per centroid and 25 iterations, for the same recall (0.994 vs 0.995 at nprobe 32);
# 30-70 s when other jobs share the two cores.
TRAIN_POINTS_PER_LIST = 40
TRAIN_ITERATIONS = 10
TRAIN_SEED = 1234
# IVF probes at least this share of the lists and at least this many items per query (so
# top-500 never runs short and small lists still cover a query's neighbourhood); see the
# table in choose_index_spec.
NPROBE_FRACTION = 1 / 64
MIN_SCANNED_ITEMS = 8192


@dataclass(frozen=True)
class IndexSpec:
    """How to index: kind plus the parameters of that kind (others are ignored)."""

    kind: IndexKind = "flat"
    nlist: int = 0  # ivf: number of inverted lists (k-means centroids)
    nprobe: int = 1  # ivf: lists scanned per query
    hnsw_m: int = 32  # hnsw: graph degree
    ef_search: int = 128  # hnsw: candidate list size at search time (>= k for good recall)
    ef_construction: int = 40  # hnsw: candidate list size at build time

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"IndexSpec.kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "ivf" and not (self.nlist >= 1 and 1 <= self.nprobe <= self.nlist):
            raise ValueError(f"IndexSpec ivf needs nlist >= 1 and 1 <= nprobe <= nlist, "
                             f"got nlist={self.nlist}, nprobe={self.nprobe}")
        if self.kind == "hnsw" and min(self.hnsw_m, self.ef_search, self.ef_construction) < 1:
            raise ValueError(f"IndexSpec hnsw needs positive hnsw_m, ef_search, ef_construction, "
                             f"got {self.hnsw_m}, {self.ef_search}, {self.ef_construction}")


def choose_index_spec(n_items: int, dim: int) -> IndexSpec:
    """Exact search for small catalogues, IVF-flat above; parameters measured for recall@100 >= 0.95.

    benchmarks/index_choice.py, this 2-core machine shared with other jobs, 64 dims, Gaussian
    mixture (n/1000 clusters, log-normal sizes), 500 single queries, 1 thread; ms p50 / p99:

        items  index                    build   top-100       top-1000      recall@100
        10K    flat (chosen)             0.0 s  0.19 / 0.39   0.44 / 4.6*   1.000
        10K    hnsw M=32 efS=256         0.2 s  0.17 / 0.23   0.39 / 0.81   1.000
        100K   flat                      0.0 s  1.15 / 4.2*   1.58 / 4.3*   1.000
        100K   ivf 1024/84 (chosen)      2.5 s  0.19 / 4.3*   0.38 / 0.63   1.000
        100K   hnsw M=32 efS=256        14.1 s  0.36 / 4.6*   0.58 / 5.0*   0.983
        1M     flat                      0.2 s  16.1 / 19.0   17.0 / 27.4   1.000
        1M     ivf 4096/16              ~60 s   0.15 / -      0.32 / -      0.976
        1M     ivf 4096/32              ~60 s   0.27 / -      0.48 / -      0.996
        1M     ivf 4096/64 (chosen)     31-71 s 0.39 / 0.50   0.57 / 0.71   1.000
        1M     ivf 4096/128             ~60 s   0.71 / 0.89   0.88 / 1.09   1.000
        1M     hnsw M=32 efS=256       168 s    0.60 / 9.0*   0.94 / 9.4*   0.955
        100K   uniform, ivf 1024/84      2.2 s  0.19 / 0.26   0.47 / 0.60   0.487

    (* p99 of 4-9 ms is another job taking the core for a scheduler slice: the same index
    measured 0.5-0.7 ms p99 when the machine was quiet. IVF build time is mostly k-means and
    varies with that load. 2 threads: IVF no faster for one query (0.39 vs 0.39 ms at 1M),
    flat 3x slower (47 vs 16 ms at 1M) as the OpenMP threads contend.)

    IVF wins: at 1M it builds in under a minute (HNSW ~3 min), p99 <= 5 ms with 10x headroom,
    top-1000 costs about what top-100 does, and nprobe 64 is 4x the probes recall 0.95 needs.
    Uniformly random vectors (no structure, unlike trained embeddings) need far more probes:
    use tune_nprobe on the real vectors when recall matters more than these defaults.
    """
    if n_items < 1 or dim < 1:
        raise ValueError(f"n_items and dim must be positive, got n_items={n_items}, dim={dim}")
    if n_items * dim <= FLAT_MAX_CELLS:
        return IndexSpec(kind="flat")
    # ~4 * sqrt(n) lists, a power of two: 1024 lists at 100K items, 4096 at 1M.
    nlist = 2 ** round(math.log2(4 * math.sqrt(n_items)))
    nlist = max(64, min(nlist, n_items // 32))
    return ivf_spec(n_items, nlist)


def ivf_spec(n_items: int, nlist: int) -> IndexSpec:
    """IVF-flat with `nlist` lists and the nprobe rule of choose_index_spec."""
    nprobe = max(round(nlist * NPROBE_FRACTION), math.ceil(MIN_SCANNED_ITEMS * nlist / n_items))
    nprobe = max(1, min(nlist, nprobe))
    return IndexSpec(kind="ivf", nlist=nlist, nprobe=nprobe)


def build_index(vectors: FloatArray, spec: IndexSpec | None = None,
                use_gpu: bool | None = None) -> faiss.Index:
    """Index rows 1..n of `vectors` ([n+1, D] float32, row 0 the zero padding row) under their row ids.

    The padding row is never added, so no search can return id 0. Building uses faiss's
    current OpenMP thread count. With `use_gpu` None or True and a GPU present, the built
    index is copied to GPU 0 (HNSW stays on the CPU: faiss has no GPU HNSW).
    """
    _check_vectors(vectors)
    spec = spec or choose_index_spec(vectors.shape[0] - 1, vectors.shape[1])
    dim = vectors.shape[1]
    items = np.ascontiguousarray(vectors[1:])
    ids = np.arange(1, vectors.shape[0], dtype=np.int64)
    index: faiss.Index
    inner: faiss.Index
    if spec.kind == "ivf":
        if spec.nlist > items.shape[0]:
            raise ValueError(f"spec.nlist={spec.nlist} exceeds the {items.shape[0]} items to index")
        # faiss's Python layer keeps the quantizer alive as long as the IVF index.
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, spec.nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.seed = TRAIN_SEED
        ivf.cp.niter = TRAIN_ITERATIONS
        ivf.train(_training_sample(items, spec.nlist))
        ivf.add_with_ids(items, ids)
        ivf.nprobe = spec.nprobe
        index = ivf
    else:
        if spec.kind == "hnsw":
            inner = faiss.IndexHNSWFlat(dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = spec.ef_construction
            inner.hnsw.efSearch = spec.ef_search
        else:
            inner = faiss.IndexFlatIP(dim)
        index = faiss.IndexIDMap(inner)
        index.add_with_ids(items, ids)
    return to_gpu(index) if _want_gpu(use_gpu) and spec.kind != "hnsw" else index


def _training_sample(items: FloatArray, nlist: int) -> FloatArray:
    size = nlist * TRAIN_POINTS_PER_LIST
    if items.shape[0] <= size:
        return items
    rows = np.random.default_rng(TRAIN_SEED).choice(items.shape[0], size, replace=False)
    return items[np.sort(rows)]


def _want_gpu(use_gpu: bool | None) -> bool:
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
    return to_gpu(index) if _want_gpu(use_gpu) and index_kind(index) != "hnsw" else index


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
        _check_vectors(vectors)
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
        _check_queries(queries, self.dim)
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


def recall_at_k(index: ItemIndex | faiss.Index, vectors: FloatArray, queries: FloatArray,
                k: int) -> float:
    """Mean share of the exact inner-product top-k (over rows 1..n of `vectors`) that `index` finds."""
    item_index = index if isinstance(index, ItemIndex) else _unmanaged(index, vectors)
    return _recall(item_index, _exact_top_k(vectors, queries, k), queries)


def tune_nprobe(index: ItemIndex, queries: FloatArray, *, k: int = 100,
                target_recall: float = 0.95) -> tuple[int, float]:
    """Set the smallest power-of-two nprobe whose recall@k on `queries` reaches the target.

    For catalogues whose vectors are harder to partition than the data choose_index_spec was
    measured on. Returns (nprobe, recall); nprobe is nlist (exact) if the target is never met.
    """
    index.nprobe = 1
    nprobe, recall = ensure_recall(index, queries, k=k, target_recall=target_recall)
    return cast(int, nprobe), recall


def item_query_nprobe(index: ItemIndex, tuned: int | None = None) -> int | None:
    """IVF probes for queries that are item vectors (item-to-item): `tuned` when training
    measured it (tune_item_nprobe, the manifest's `index_item_nprobe`), else the nprobe rule of
    choose_index_spec for this nlist (measured with queries drawn from the indexed
    distribution, as item vectors are); capped at the index's own nprobe (raised for user
    vectors by ensure_recall). None for flat and HNSW indexes."""
    if index.kind != "ivf":
        return None
    probes = tuned if tuned is not None else ivf_spec(index.n_items, nlist=index.nlist).nprobe
    return max(1, min(index.nprobe, int(probes)))


ITEM_QUERY_K = 51  # item-to-item: the serving default of 50 neighbours per seed, plus the seed


def tune_item_nprobe(index: ItemIndex, seeds: IntArray, *, k: int = ITEM_QUERY_K,
                     target_recall: float = 0.95) -> tuple[int, float] | None:
    """The smallest power-of-two nprobe, at most the index's own, whose recall@k for item-vector
    queries (the catalogue rows `seeds`, e.g. users' recent items, repeats kept so popular
    seeds weigh as they do in serving) reaches the target; (nprobe, recall). The index's own
    nprobe is left as it is. None for flat and HNSW indexes.

    Item vectors sit in the lists they were clustered into, so they need far fewer probes than
    user vectors: on the 8-epoch 100K benchmark model (nprobe 84 of 1,024 for users), seeds
    drawn from the 300 most popular items reached recall@51 0.943 at 16 probes and 0.984 at 32,
    and five seeds took 0.31 against 0.66 ms at 32 against 84 probes.
    """
    if index.kind != "ivf":
        return None
    seeds = np.asarray(seeds, dtype=np.int64)
    if seeds.ndim != 1 or seeds.size == 0 or seeds.min() < 1 or seeds.max() >= len(index.vectors):
        raise ValueError(f"seeds must be a non-empty 1-D array of catalogue rows in "
                         f"[1, {len(index.vectors) - 1}], got shape {seeds.shape}")
    queries = np.ascontiguousarray(index.vectors[seeds])
    truth = _exact_top_k(index.vectors, queries, k)
    return _double_probes(lambda nprobe: _recall(index, truth, queries, nprobe=nprobe),
                          1, index.nprobe, target_recall)


def ensure_recall(index: ItemIndex, queries: FloatArray, *, k: int = 100,
                  target_recall: float = 0.95) -> tuple[int | None, float]:
    """Double an IVF index's nprobe from its current value until recall@k on `queries` (real
    user vectors) reaches the target; never lowers it. Returns (nprobe, recall); nprobe is None
    for flat and HNSW indexes, which are left as they are.

    choose_index_spec's defaults were measured on clustered vectors; a trained model's user
    vectors can sit far from the item clusters (measured: recall@100 0.68 at 100K items with
    nprobe 84 of 1024), so the training pipeline checks on its own users before saving (the
    evaluation step reports recall again on held-out test users: tuned on one set, reported on
    another).
    """
    if index.kind == "flat":
        return None, 1.0  # exact search: nothing to measure
    truth = _exact_top_k(index.vectors, queries, k)
    recall = _recall(index, truth, queries)
    if index.kind != "ivf":
        return None, recall

    def measure(nprobe: int) -> float:
        index.nprobe = nprobe
        return _recall(index, truth, queries)

    return _double_probes(measure, index.nprobe, index.nlist, target_recall, recall)


def _double_probes(measure: Callable[[int], float], start: int, cap: int, target: float,
                   recall: float | None = None) -> tuple[int, float]:
    """Double nprobe from `start` (recall there already known, or measured) until `measure`
    reaches the target or nprobe reaches `cap`; (nprobe, recall)."""
    nprobe = start
    recall = measure(nprobe) if recall is None else recall
    while recall < target and nprobe < cap:
        nprobe = min(2 * nprobe, cap)
        recall = measure(nprobe)
    return nprobe, recall


def _exact_top_k(vectors: FloatArray, queries: FloatArray, k: int) -> IntArray:
    _check_queries(queries, vectors.shape[1])
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k must be a positive int, got {k!r}")
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors[1:]))
    _, rows = exact.search(np.ascontiguousarray(queries), min(int(k), vectors.shape[0] - 1))
    return rows + 1


def _recall(index: ItemIndex, truth: IntArray, queries: FloatArray,
            nprobe: int | None = None) -> float:
    _, found = index.search(queries, truth.shape[1], nprobe=nprobe)
    hits = sum(len(np.intersect1d(t, f[f >= 0])) for t, f in zip(truth, found))
    return hits / truth.size


def _unmanaged(index: faiss.Index, vectors: FloatArray) -> ItemIndex:
    # Bypass __init__ so that wrapping does not change faiss's process-wide thread count.
    wrapper = ItemIndex.__new__(ItemIndex)
    wrapper.index, wrapper.vectors, wrapper.kind = index, vectors, index_kind(index)
    wrapper._on_gpu, wrapper._cpu_copy = is_on_gpu(index), None
    return wrapper


def _check_vectors(vectors: FloatArray) -> None:
    if not isinstance(vectors, np.ndarray) or vectors.dtype != np.float32 or vectors.ndim != 2:
        raise ValueError(f"vectors must be a float32 [n+1, D] array, got "
                         f"{getattr(vectors, 'dtype', type(vectors))} {getattr(vectors, 'shape', '')}")
    if vectors.shape[0] < 2 or vectors.shape[1] < 1:
        raise ValueError(f"vectors must hold the padding row and at least one item, got {vectors.shape}")
    if np.any(vectors[0]):
        raise ValueError("vectors row 0 must be the all-zero padding row")


def _check_queries(queries: FloatArray, dim: int) -> None:
    if not isinstance(queries, np.ndarray) or queries.dtype != np.float32:
        raise ValueError(f"queries must be a float32 array, got "
                         f"{getattr(queries, 'dtype', type(queries).__name__)}")
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise ValueError(f"queries must have shape [B, {dim}], got {queries.shape}")
