"""Measure flat / IVF / HNSW item indexes on synthetic clustered vectors: build time, latency, recall.

    python benchmarks/index_choice.py --sizes 10000 100000 1000000
    python benchmarks/index_choice.py --sizes 1000000 --nprobe 32 64 128   # sweep IVF nprobe

Vectors are a Gaussian mixture on the unit sphere (64 dims, ~1000 items per cluster, see
make_data), with the zero padding row 0 the index must skip; `--data uniform` is the worst
case. Queries come from the same distribution (fresh draws, not catalogue rows). Latency is single-query search through
ItemIndex.search, one call per query, timed with perf_counter.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import faiss
import numpy as np

from recsys.models.index import ItemIndex
from training.index_build import FLAT_MAX_CELLS, IndexSpec, build_index, choose_index_spec, ivf_spec
from training.index_tuning import recall_at_k


def make_data(n: int, dim: int, n_queries: int, spread: float, data: str = "gmm",
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """([n+1, dim] item vectors with zero row 0, [n_queries, dim] queries), all unit norm.

    gmm: a Gaussian mixture, n/1000 centres on the unit sphere, log-normal cluster sizes
    (a few large "genres", many small ones), isotropic noise of norm `spread` around each
    centre. uniform: directions uniform on the sphere, the worst case for any partitioning
    index (no structure at all; trained embeddings are far from it).
    """
    rng = np.random.default_rng(seed)
    total = n + n_queries
    if data == "uniform":
        points = rng.standard_normal((total, dim), dtype=np.float32)
    else:
        centers = rng.standard_normal((max(16, n // 1000), dim), dtype=np.float32)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
        weights = rng.lognormal(0.0, 1.0, len(centers))
        labels = rng.choice(len(centers), total, p=weights / weights.sum())
        noise = rng.standard_normal((total, dim), dtype=np.float32)
        points = centers[labels] + noise * np.float32(spread / np.sqrt(dim))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    rows = rng.permutation(total)
    vectors = np.vstack([np.zeros((1, dim), np.float32), points[rows[:n]]])
    return vectors, points[rows[n:]]


def latency_ms(index: ItemIndex, queries: np.ndarray, k: int) -> tuple[float, float]:
    times = []
    for q in queries:
        row = q[None, :]
        start = time.perf_counter()
        index.search(row, k)
        times.append(time.perf_counter() - start)
    ms = np.array(times[5:]) * 1e3  # first calls warm caches
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def measure(name: str, data: str, vectors: np.ndarray, queries: np.ndarray, spec: IndexSpec,
            threads: Sequence[int], nprobes: Sequence[int]) -> None:
    faiss.omp_set_num_threads(2)  # build on every core
    start = time.perf_counter()
    raw = build_index(vectors, spec, use_gpu=False)
    build_s = time.perf_counter() - start
    settings = list(nprobes) if spec.kind == "ivf" and nprobes else [None]
    for setting in settings:
        for t in threads:
            index = ItemIndex(raw, vectors, threads=t)
            label = name
            if setting is not None:
                index.nprobe = setting
            if spec.kind == "ivf":
                label = f"{name} nlist={spec.nlist} nprobe={index.nprobe}"
            elif spec.kind == "hnsw":
                label = f"{name} M={spec.hnsw_m} efC={spec.ef_construction} efS={index.ef_search}"
            recall = recall_at_k(index, vectors, queries, 100)
            p50_100, p99_100 = latency_ms(index, queries, 100)
            p50_1k, p99_1k = latency_ms(index, queries, 1000)
            print(f"| {len(vectors) - 1:>9,} {data:>7} | {label:<34} | {t} | {build_s:7.1f} | "
                  f"{p50_100:6.2f} / {p99_100:6.2f} | {p50_1k:6.2f} / {p99_1k:6.2f} | "
                  f"{recall:.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--spread", type=float, default=0.8,
                        help="noise norm around a cluster centre (0.8: clusters overlap)")
    parser.add_argument("--data", choices=["gmm", "uniform"], default="gmm")
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw"])
    parser.add_argument("--nprobe", type=int, nargs="*", default=[],
                        help="IVF nprobe values to sweep (default: the chosen spec's)")
    parser.add_argument("--nlist", type=int, default=0, help="override the chosen IVF nlist")
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--hnsw-max", type=int, default=100_000,
                        help="skip HNSW above this many items (1M takes minutes to build)")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-search", type=int, default=256,
                        help="HNSW efSearch (faiss searches with max(efSearch, k))")
    args = parser.parse_args()

    print("| items data | index | threads | build s | top-100 p50 / p99 ms | "
          "top-1000 p50 / p99 ms | recall@100 |")
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:
        vectors, queries = make_data(n, args.dim, args.queries, args.spread, args.data)
        chosen = choose_index_spec(n, args.dim)
        # Below the flat threshold, show the IVF that larger catalogues would get, scaled down.
        ivf = chosen if chosen.kind == "ivf" else choose_index_spec(FLAT_MAX_CELLS // args.dim + 1,
                                                                    args.dim)
        nlist = min(args.nlist or ivf.nlist, n // 39)
        specs = {
            "flat": IndexSpec(kind="flat"),
            "ivf": ivf_spec(n, nlist),
            "hnsw": IndexSpec(kind="hnsw", hnsw_m=args.hnsw_m, ef_search=args.ef_search),
        }
        for kind in args.kinds:
            if kind == "hnsw" and n > args.hnsw_max:
                print(f"| {n:>9,} {args.data:>7} | hnsw skipped (--hnsw-max {args.hnsw_max:,}) "
                      "| | | | | |")
                continue
            tag = f"{kind} (chosen)" if specs[kind] == chosen else kind
            measure(tag, args.data, vectors, queries, specs[kind], args.threads, args.nprobe)


if __name__ == "__main__":
    main()
