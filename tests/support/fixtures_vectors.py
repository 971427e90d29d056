"""Clustered unit vectors for index tests (trained embeddings cluster; uniform noise does not)."""
from __future__ import annotations

from collections.abc import Iterator

import faiss
import numpy as np
import pytest

from training.index_build import build_index, ivf_spec

DIM = 32


def clustered(n: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """([n+1, DIM] unit vectors, zero row 0; [n_queries, DIM] queries) from a Gaussian mixture."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(8, n // 500), DIM), dtype=np.float32)
    points = centers[rng.integers(0, len(centers), n + n_queries)]
    points += rng.standard_normal(points.shape, dtype=np.float32) * np.float32(0.15)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    vectors = np.vstack([np.zeros((1, DIM), np.float32), points[:n]])
    return vectors, points[n:]


@pytest.fixture(scope="session")
def clustered_small() -> tuple[np.ndarray, np.ndarray]:
    """2,000 clustered items (flat-index size) and 20 queries."""
    return clustered(2_000, 20)


@pytest.fixture(scope="session")
def clustered_ivf() -> tuple[np.ndarray, np.ndarray, faiss.Index]:
    """30,000 clustered items, 200 queries and an IVF index of 256 lists over the items."""
    vectors, queries = clustered(30_000, 200, seed=1)
    return vectors, queries, build_index(vectors, ivf_spec(30_000, nlist=256), use_gpu=False)


@pytest.fixture
def restore_faiss_threads() -> Iterator[None]:
    """ItemIndex sets faiss's process-wide thread count: put it back after the test."""
    threads = faiss.omp_get_max_threads()
    yield
    faiss.omp_set_num_threads(threads)
