"""Retrieval at one catalogue size: index build time, single-query latency, recall@100 vs exact.

    python -m benchmarks.indexbench --models-root DIR --queries 300

Queries are real user vectors: the bundle's user tower on the known users' histories. The
index is the bundle's own (what the service loads), searched through ItemIndex with one thread
as the service does; build time is a rebuild of the same spec from the bundle's item vectors
with faiss's default threads, as training builds it. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from benchmarks.models import BenchModels
from recsys.models import artifacts
from recsys.models.bundles import EmbeddingBundle
from recsys.models.index import ItemIndex
from training.index_build import build_index, choose_index_spec
from training.index_tuning import recall_at_k


def search_latency_ms(index: ItemIndex, queries: np.ndarray, k: int) -> dict[str, float]:
    times = []
    for row in queries:
        start = time.perf_counter()
        index.search(row[None, :], k)
        times.append(time.perf_counter() - start)
    ms = np.asarray(times[5:]) * 1000  # the first searches warm caches
    return {"p50": round(float(np.percentile(ms, 50)), 3), "p99": round(float(np.percentile(ms, 99)), 3),
            "mean": round(float(ms.mean()), 3)}


def user_queries(bundle: EmbeddingBundle, n: int) -> np.ndarray:
    users = bundle.users
    if users is None:
        raise ValueError(f"{bundle.path} has no user histories to make query vectors from")
    rows = np.random.default_rng(0).permutation(len(users.user_ids))[:n]
    return bundle.encode_users(users.histories[rows], users.attributes[rows])


def measure(models: BenchModels, n_queries: int, k_candidates: int, rebuild: bool) -> dict[str, Any]:
    started = time.perf_counter()
    bundle = EmbeddingBundle.load(models.workdir / "embedding", threads=1, verify=False)
    load_s = time.perf_counter() - started
    queries = user_queries(bundle, n_queries)
    index = bundle.index
    out: dict[str, Any] = {"n_items": index.n_items, "dim": index.dim, "kind": index.kind,
                           "load_s": round(load_s, 2), "queries": len(queries)}
    if index.kind == "ivf":
        out.update(nlist=index.nlist, nprobe=index.nprobe)
    out["latency_top100_ms"] = search_latency_ms(index, queries, 100)
    out[f"latency_top{k_candidates}_ms"] = search_latency_ms(index, queries, k_candidates)
    out["recall_at_100"] = round(recall_at_k(index, bundle.item_vectors, queries, 100), 4)
    if rebuild:
        vectors = np.load(models.workdir / "embedding" / artifacts.ITEM_VECTORS)
        spec = choose_index_spec(vectors.shape[0] - 1, vectors.shape[1])
        faiss.omp_set_num_threads(os.cpu_count() or 1)  # as training builds it
        start = time.perf_counter()
        build_index(vectors, spec, use_gpu=False)
        out["build_s"] = round(time.perf_counter() - start, 2)
        out["build_threads"] = faiss.omp_get_max_threads()
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-root", type=Path, required=True)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--candidates", type=int, default=1000, help="k of the service's ANN search")
    parser.add_argument("--no-rebuild", action="store_true", help="skip timing an index rebuild")
    args = parser.parse_args()
    result = measure(BenchModels.read(args.models_root), args.queries, args.candidates,
                     not args.no_rebuild)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
