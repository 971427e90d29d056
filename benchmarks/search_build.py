"""What a search index costs at one catalogue size: build time, memory, and the query path that
needs no model (parse + BM25) one query at a time. Run in a child process per size (`python -m
benchmarks.search_build --items N --out FILE`), so each size's memory is its own.

The catalogue is a trained bundle's when one is given (--embedding), else the synthetic
generator's (training/data/synthetic.py) with its statistics from 1,000 users: building an
index needs titles and genres, not a model.
"""
from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from recsys.features import ItemCatalog
from recsys.models import artifacts
from recsys.search.index import SearchIndex, build_search_index
from recsys.search.query import QueryParser
from recsys.search.retrievers import TextRetriever
from recsys.settings import ServingSettings

USERS = 1000
TITLE_BUCKETS, TITLE_TOKENS = 8192, 16  # training.config.TwoTowerConfig's


def synthetic_catalog(n_items: int) -> ItemCatalog:
    from training.catalog import build_catalog
    from training.data.synthetic import SyntheticConfig, generate_synthetic

    dataset = generate_synthetic(SyntheticConfig(n_users=USERS, n_items=n_items))
    return build_catalog(dataset, dataset.interactions, TITLE_BUCKETS, TITLE_TOKENS)


def rss_mib() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def index_bytes(index: SearchIndex) -> dict[str, int]:
    """Bytes of the index's arrays, by part (Python objects, the vocabulary dict among them,
    are in the RSS growth only)."""
    bm25 = index.bm25.scores
    corrector = index.corrector
    return {"bm25": int(sum(bm25[k].nbytes for k in ("data", "indices", "indptr"))),
            "title_postings": int(index.titles.rows.nbytes + index.titles.indptr.nbytes),
            "trigram_postings": int(corrector.postings.nbytes + corrector.indptr.nbytes),
            "genre_rows": int(index.genre_rows.nbytes), "years": int(index.years.nbytes)}


def text_queries(catalog: ItemCatalog, count: int, seed: int = 0) -> list[str]:
    from training.search_queries import title_window, with_typo

    rng = np.random.default_rng(seed)
    rows = rng.integers(1, catalog.size + 1, size=count)
    queries = []
    for i, row in enumerate(rows.tolist()):
        window = title_window(str(catalog.titles[row]), rng)
        queries.append(" ".join(with_typo(window, rng) if i % 2 else window))
    return queries


def text_path_ms(index: SearchIndex, queries: list[str], candidates: int) -> dict[str, float]:
    """Parse + BM25 per query (ms), one at a time: the part of /search that grows with the
    catalogue without a model."""
    parser, bm25 = QueryParser(index), TextRetriever(index, candidates)
    timings = []
    for query in queries:
        started = time.perf_counter()
        bm25.retrieve(parser.parse(query), None)
        timings.append((time.perf_counter() - started) * 1000)
    values = np.asarray(timings[len(timings) // 10:])  # the first tenth warms caches
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99)),
            "mean": float(values.mean()), "queries": float(values.size)}


def measure(n_items: int, embedding: Path | None, queries: int) -> dict[str, Any]:
    started = time.perf_counter()
    catalog = artifacts.load_catalog(embedding) if embedding else synthetic_catalog(n_items)
    made_s = time.perf_counter() - started
    before = rss_mib()
    started = time.perf_counter()
    index = build_search_index(catalog, ServingSettings.model_fields[
        "search_typo_similarity"].default)
    build_s = time.perf_counter() - started
    grown = rss_mib() - before
    return {"items": catalog.size, "catalogue": "bundle" if embedding else "synthetic",
            "catalogue_s": round(made_s, 2), "build_s": round(build_s, 3),
            "rss_growth_mib": round(grown, 1), "vocabulary": len(index.vocabulary),
            "typo_vocabulary": len(index.corrector.words), "array_bytes": index_bytes(index),
            "text_path_ms": text_path_ms(index, text_queries(catalog, queries),
                                         ServingSettings.model_fields[
                                             "search_candidates"].default)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--embedding", type=Path, help="a bundle whose catalogue to index")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = measure(args.items, args.embedding, args.queries)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
