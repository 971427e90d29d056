"""Which FAISS index suits a catalogue, and building it over the item vectors."""
from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np
import numpy.typing as npt
from tqdm.auto import tqdm

from recsys.features import PAD
from recsys.models.index import (
    KINDS,
    IndexKind,
    ItemIndex,
    check_vectors,
    default_nprobe,
    to_gpu,
    want_gpu,
)

FloatArray = npt.NDArray[np.float32]

# Exact search while n_items * dim stays below this (50K items at 64 dims, ~0.4 ms per query).
FLAT_MAX_CELLS = 50_000 * 64
# IVF k-means: at most 40 vectors per centroid (faiss warns below 39) and 10 iterations.
# 1M items / 4096 lists, 2 threads, quiet machine: ~16 s to build (train + add) against ~80 s
# with 64 per centroid and 25 iterations, for the same recall (0.994 vs 0.995 at nprobe 32);
# 30-70 s when other jobs share the two cores.
TRAIN_POINTS_PER_LIST = 40
TRAIN_ITERATIONS = 10
TRAIN_SEED = 1234



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
    """IVF-flat with `nlist` lists and the nprobe rule of choose_index_spec (default_nprobe)."""
    return IndexSpec(kind="ivf", nlist=nlist, nprobe=default_nprobe(n_items, nlist))


def build_index(vectors: FloatArray, spec: IndexSpec | None = None,
                use_gpu: bool | None = None) -> faiss.Index:
    """Index rows 1..n of `vectors` ([n+1, D] float32, row 0 the zero padding row) under their row ids.

    The padding row is never added, so no search can return id 0. Building uses faiss's
    current OpenMP thread count. With `use_gpu` None or True and a GPU present, the built
    index is copied to GPU 0 (HNSW stays on the CPU: faiss has no GPU HNSW).
    """
    check_vectors(vectors)
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
    return to_gpu(index) if want_gpu(use_gpu) and spec.kind != "hnsw" else index


def _training_sample(items: FloatArray, nlist: int) -> FloatArray:
    size = nlist * TRAIN_POINTS_PER_LIST
    if items.shape[0] <= size:
        return items
    rows = np.random.default_rng(TRAIN_SEED).choice(items.shape[0], size, replace=False)
    return items[np.sort(rows)]


# Catalogues up to this many items get a precomputed neighbour table in their bundle (40 MiB of
# int32 at 50 neighbours). Building it is one item-query search per item: 17 s on 2 threads at
# 100K items with 128 probes (the benchmark model). Above it serving searches the neighbours of
# a request's seeds, as bundles before the table did.
NEIGHBOUR_TABLE_MAX_ITEMS = 200_000


def item_neighbours(index: ItemIndex, k: int, nprobe: int | None = None,
                    batch_size: int = 4096) -> npt.NDArray[np.int32]:
    """[n+1, k] int32: ItemIndex.neighbours of every item (`nprobe` IVF probes), as the
    item-to-item source would search them; row 0 is PAD."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    n = index.n_items
    table = np.full((n + 1, k), PAD, dtype=np.int32)
    for start in tqdm(range(1, n + 1, batch_size), desc="item neighbours", leave=False):
        rows = np.arange(start, min(start + batch_size, n + 1))
        table[rows] = index.neighbours(rows, k, nprobe)
    return table
