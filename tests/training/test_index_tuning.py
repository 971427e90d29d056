"""Tests for training.index_tuning: recall against exact search and the IVF probes it tunes."""
from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from recsys.models.index import ItemIndex, item_query_nprobe, load_index, save_index
from training.index_build import build_index, ivf_spec
from training.index_tuning import (
    _fewest_probes,
    ensure_recall,
    recall_at_k,
    tune_item_nprobe,
    tune_nprobe,
)

pytestmark = pytest.mark.usefixtures("restore_faiss_threads")


def test_ivf_recall_at_100_meets_target(clustered_ivf: tuple[np.ndarray, np.ndarray, faiss.Index]
                                        ) -> None:
    vectors, queries, raw = clustered_ivf
    index = ItemIndex(raw, vectors)
    assert index.kind == "ivf"
    assert recall_at_k(index, vectors, queries, 100) >= 0.95
    assert recall_at_k(raw, vectors, queries, 100) >= 0.95  # a bare faiss index works too


def test_tune_nprobe_finds_the_fewest_probes_reaching_the_target(
        clustered_ivf: tuple[np.ndarray, np.ndarray, faiss.Index]) -> None:
    vectors, queries, raw = clustered_ivf
    index = ItemIndex(faiss.clone_index(raw), vectors)
    nprobe, recall = tune_nprobe(index, queries[:50], k=100, target_recall=0.9)
    assert recall >= 0.9 and index.nprobe == nprobe
    if nprobe > 1:
        index.nprobe = nprobe - 1
        assert recall_at_k(index, vectors, queries[:50], 100) < 0.9


def test_ensure_recall_raises_nprobe_until_the_target_and_the_saved_index_keeps_it(
        clustered_ivf: tuple[np.ndarray, np.ndarray, faiss.Index], tmp_path: Path) -> None:
    vectors, queries, raw = clustered_ivf
    index = ItemIndex(faiss.clone_index(raw), vectors)
    index.nprobe = 1
    assert recall_at_k(index, vectors, queries[:50], 100) < 0.95
    nprobe, recall = ensure_recall(index, queries[:50], k=100, target_recall=0.95)
    assert nprobe is not None and nprobe > 1 and recall >= 0.95 and index.nprobe == nprobe
    save_index(index.index, tmp_path / "index.faiss")
    assert ItemIndex(load_index(tmp_path / "index.faiss", use_gpu=False), vectors).nprobe == nprobe


def test_item_queries_probe_the_default_lists_and_keep_their_neighbours(
        clustered_ivf: tuple[np.ndarray, np.ndarray, faiss.Index],
        clustered_small: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, _, raw = clustered_ivf
    index = ItemIndex(faiss.clone_index(raw), vectors)
    index.nprobe = index.nlist
    probes = item_query_nprobe(index)
    assert probes is not None and probes < index.nlist
    items = vectors[1:201]
    assert recall_at_k(index, vectors, items, 50) == 1.0  # nprobe = nlist: exact
    _, found = index.search(items, 50, nprobe=probes)
    _, exact = index.search(items, 50)
    overlap = np.mean([len(np.intersect1d(a, b)) / 50 for a, b in zip(found, exact)])
    assert overlap >= 0.95
    flat_vectors, _ = clustered_small
    assert item_query_nprobe(ItemIndex(build_index(flat_vectors, use_gpu=False),
                                       flat_vectors)) is None


def test_tune_item_nprobe_finds_the_fewest_probes_that_keep_item_neighbours(
        clustered_ivf: tuple[np.ndarray, np.ndarray, faiss.Index],
        clustered_small: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, _, raw = clustered_ivf
    index = ItemIndex(faiss.clone_index(raw), vectors)
    index.nprobe = 64
    seeds = np.r_[np.arange(1, 301), np.arange(1, 51)]  # repeats kept: 1..50 weigh twice
    tuned = tune_item_nprobe(index, seeds, k=51, target_recall=0.95)
    assert tuned is not None
    nprobe, recall = tuned
    assert index.nprobe == 64  # measured per call, the index's own setting untouched
    queries = vectors[seeds]
    assert recall >= 0.95 and nprobe < 64
    truth = index.search(queries, 51, nprobe=index.nlist)[1]

    def measured(probes: int) -> float:
        found = index.search(queries, 51, nprobe=probes)[1]
        return float(np.mean([len(np.intersect1d(t, f)) / 51 for t, f in zip(truth, found)]))

    assert measured(nprobe) == pytest.approx(recall)
    if nprobe > 1:
        assert measured(nprobe - 1) < 0.95  # the fewest probes that reach it
    # never above the index's own probes, even when the target is out of reach
    assert tune_item_nprobe(index, seeds, k=51, target_recall=1.01) == (64, pytest.approx(
        measured(64)))
    # a caller may allow more probes than the index's own (the neighbour table, searched once)
    assert tune_item_nprobe(index, seeds, k=51, target_recall=1.01, most=index.nlist) == (
        index.nlist, pytest.approx(1.0))
    # serving takes the tuned value, capped at the index's nprobe; None keeps the rule
    assert item_query_nprobe(index, nprobe) == nprobe
    assert item_query_nprobe(index, 10_000) == 64
    assert item_query_nprobe(index, None) == min(64, ivf_spec(index.n_items, index.nlist).nprobe)
    flat_vectors, _ = clustered_small
    assert tune_item_nprobe(ItemIndex(build_index(flat_vectors, use_gpu=False), flat_vectors),
                            np.arange(1, 10)) is None
    with pytest.raises(ValueError, match="seeds must be"):
        tune_item_nprobe(index, np.asarray([0, 5]))


def test_ensure_recall_never_lowers_nprobe_and_leaves_flat_indexes_alone(
        clustered_ivf: tuple[np.ndarray, np.ndarray, faiss.Index],
        clustered_small: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, queries, raw = clustered_ivf
    index = ItemIndex(faiss.clone_index(raw), vectors)
    index.nprobe = index.nlist // 2
    assert ensure_recall(index, queries[:20], k=100)[0] == index.nlist // 2
    flat_vectors, flat_queries = clustered_small
    flat = ItemIndex(build_index(flat_vectors, use_gpu=False), flat_vectors)
    assert ensure_recall(flat, flat_queries, k=10) == (None, 1.0)


def test_the_fewest_probes_are_found_by_doubling_then_bisecting() -> None:
    """Recall grows with probes; the search returns the first count that reaches the target,
    measures far fewer counts than a scan, never goes below its start and stops at the cap."""
    tried: list[int] = []

    def recall(nprobe: int) -> float:
        tried.append(nprobe)
        return min(1.0, nprobe / 100)

    assert _fewest_probes(recall, 5, 1000, 0.37) == (37, pytest.approx(0.37))
    assert tried[:4] == [5, 10, 20, 40] and len(tried) <= 4 + 5  # then bisects (20, 40]
    assert _fewest_probes(recall, 50, 1000, 0.37) == (50, pytest.approx(0.5))  # never lower
    assert _fewest_probes(recall, 5, 64, 0.9) == (64, pytest.approx(0.64))  # out of reach
    assert _fewest_probes(recall, 5, 1000, 0.37, recall=0.05) == (37, pytest.approx(0.37))
