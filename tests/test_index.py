"""Tests for recsys.index: exactness, IVF recall, padding, persistence and argument errors."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest

from recsys.errors import ArtifactError
from recsys.index import (
    IndexSpec,
    ItemIndex,
    build_index,
    choose_index_spec,
    ensure_recall,
    item_query_nprobe,
    ivf_spec,
    load_index,
    recall_at_k,
    save_index,
    tune_item_nprobe,
    tune_nprobe,
)

DIM = 32
needs_gpu = pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="faiss sees no GPU")


def clustered(n: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """([n+1, DIM] unit vectors, zero row 0; [n_queries, DIM] queries) from a Gaussian mixture."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(8, n // 500), DIM), dtype=np.float32)
    points = centers[rng.integers(0, len(centers), n + n_queries)]
    points += rng.standard_normal(points.shape, dtype=np.float32) * np.float32(0.15)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    vectors = np.vstack([np.zeros((1, DIM), np.float32), points[:n]])
    return vectors, points[n:]


@pytest.fixture(autouse=True)
def _restore_faiss_threads() -> Iterator[None]:
    threads = faiss.omp_get_max_threads()
    yield
    faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, np.ndarray]:
    return clustered(2_000, 20)


@pytest.fixture(scope="module")
def ivf_data() -> tuple[np.ndarray, np.ndarray, faiss.Index]:
    vectors, queries = clustered(30_000, 200, seed=1)
    return vectors, queries, build_index(vectors, ivf_spec(30_000, nlist=256), use_gpu=False)


def test_choose_index_spec_is_flat_for_small_and_ivf_for_large_catalogues() -> None:
    assert choose_index_spec(10_000, 64).kind == "flat"
    large = choose_index_spec(1_000_000, 64)
    assert large.kind == "ivf" and 1 <= large.nprobe <= large.nlist < 1_000_000


def test_flat_search_equals_brute_force(small: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, queries = small
    index = ItemIndex(build_index(vectors, use_gpu=False), vectors)
    assert index.kind == "flat"
    scores, ids = index.search(queries, 10)
    brute = queries @ vectors[1:].T
    expected_ids = np.argsort(-brute, axis=1, kind="stable")[:, :10] + 1
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected_ids - 1, axis=1),
                               rtol=1e-5, atol=1e-5)
    assert scores.dtype == np.float32 and ids.dtype == np.int64


def test_ivf_recall_at_100_meets_target(ivf_data: tuple[np.ndarray, np.ndarray, faiss.Index]
                                        ) -> None:
    vectors, queries, raw = ivf_data
    index = ItemIndex(raw, vectors)
    assert index.kind == "ivf"
    assert recall_at_k(index, vectors, queries, 100) >= 0.95
    assert recall_at_k(raw, vectors, queries, 100) >= 0.95  # a bare faiss index works too


def test_tune_nprobe_finds_smallest_power_of_two_reaching_target(
        ivf_data: tuple[np.ndarray, np.ndarray, faiss.Index]) -> None:
    vectors, queries, raw = ivf_data
    index = ItemIndex(faiss.clone_index(raw), vectors)
    nprobe, recall = tune_nprobe(index, queries[:50], k=100, target_recall=0.9)
    assert recall >= 0.9 and index.nprobe == nprobe
    if nprobe > 1:
        index.nprobe = nprobe // 2
        assert recall_at_k(index, vectors, queries[:50], 100) < 0.9


def test_ensure_recall_raises_nprobe_until_the_target_and_the_saved_index_keeps_it(
        ivf_data: tuple[np.ndarray, np.ndarray, faiss.Index], tmp_path: Path) -> None:
    vectors, queries, raw = ivf_data
    index = ItemIndex(faiss.clone_index(raw), vectors)
    index.nprobe = 1
    assert recall_at_k(index, vectors, queries[:50], 100) < 0.95
    nprobe, recall = ensure_recall(index, queries[:50], k=100, target_recall=0.95)
    assert nprobe is not None and nprobe > 1 and recall >= 0.95 and index.nprobe == nprobe
    save_index(index.index, tmp_path / "index.faiss")
    assert ItemIndex(load_index(tmp_path / "index.faiss", use_gpu=False), vectors).nprobe == nprobe


def test_a_per_call_nprobe_overrides_the_index_for_that_call_only(
        ivf_data: tuple[np.ndarray, np.ndarray, faiss.Index]) -> None:
    vectors, queries, raw = ivf_data
    index = ItemIndex(faiss.clone_index(raw), vectors)
    index.nprobe = index.nlist  # exhaustive: the exact answer
    exact = index.search(queries[:20], 100)[1]
    one_list = index.search(queries[:20], 100, nprobe=1)[1]
    assert (one_list != exact).any() and index.nprobe == index.nlist
    np.testing.assert_array_equal(index.search(queries[:20], 100)[1], exact)


def test_item_queries_probe_the_default_lists_and_keep_their_neighbours(
        ivf_data: tuple[np.ndarray, np.ndarray, faiss.Index],
        small: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, _, raw = ivf_data
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
    flat_vectors, _ = small
    assert item_query_nprobe(ItemIndex(build_index(flat_vectors, use_gpu=False),
                                       flat_vectors)) is None


def test_tune_item_nprobe_finds_the_fewest_probes_that_keep_item_neighbours(
        ivf_data: tuple[np.ndarray, np.ndarray, faiss.Index],
        small: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, _, raw = ivf_data
    index = ItemIndex(faiss.clone_index(raw), vectors)
    index.nprobe = 64
    seeds = np.r_[np.arange(1, 301), np.arange(1, 51)]  # repeats kept: 1..50 weigh twice
    tuned = tune_item_nprobe(index, seeds, k=51, target_recall=0.95)
    assert tuned is not None
    nprobe, recall = tuned
    assert index.nprobe == 64  # measured per call, the index's own setting untouched
    queries = vectors[seeds]
    assert recall >= 0.95 and nprobe < 64 and nprobe & (nprobe - 1) == 0  # a power of two
    truth = index.search(queries, 51, nprobe=index.nlist)[1]

    def measured(probes: int) -> float:
        found = index.search(queries, 51, nprobe=probes)[1]
        return float(np.mean([len(np.intersect1d(t, f)) / 51 for t, f in zip(truth, found)]))

    assert measured(nprobe) == pytest.approx(recall)
    if nprobe > 1:
        assert measured(nprobe // 2) < 0.95  # the smallest power of two that reaches it
    # never above the index's own probes, even when the target is out of reach
    assert tune_item_nprobe(index, seeds, k=51, target_recall=1.01) == (64, pytest.approx(
        measured(64)))
    # serving takes the tuned value, capped at the index's nprobe; None keeps the rule
    assert item_query_nprobe(index, nprobe) == nprobe
    assert item_query_nprobe(index, 10_000) == 64
    assert item_query_nprobe(index, None) == min(64, ivf_spec(index.n_items, index.nlist).nprobe)
    flat_vectors, _ = small
    assert tune_item_nprobe(ItemIndex(build_index(flat_vectors, use_gpu=False), flat_vectors),
                            np.arange(1, 10)) is None
    with pytest.raises(ValueError, match="seeds must be"):
        tune_item_nprobe(index, np.asarray([0, 5]))


def test_ensure_recall_never_lowers_nprobe_and_leaves_flat_indexes_alone(
        ivf_data: tuple[np.ndarray, np.ndarray, faiss.Index],
        small: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, queries, raw = ivf_data
    index = ItemIndex(faiss.clone_index(raw), vectors)
    index.nprobe = index.nlist // 2
    assert ensure_recall(index, queries[:20], k=100)[0] == index.nlist // 2
    flat_vectors, flat_queries = small
    flat = ItemIndex(build_index(flat_vectors, use_gpu=False), flat_vectors)
    assert ensure_recall(flat, flat_queries, k=10) == (None, 1.0)


@pytest.mark.parametrize("spec", [IndexSpec(kind="flat"), IndexSpec(kind="ivf", nlist=16, nprobe=16),
                                  IndexSpec(kind="hnsw", hnsw_m=8, ef_search=64)])
def test_padding_row_is_never_returned(small: tuple[np.ndarray, np.ndarray],
                                       spec: IndexSpec) -> None:
    vectors, queries = small
    index = ItemIndex(build_index(vectors, spec, use_gpu=False), vectors)
    # Zero and negated queries score the padding row 0 level with or above real items.
    probes = np.vstack([queries, np.zeros((1, DIM), np.float32), -queries[:2]])
    _, ids = index.search(probes, index.n_items)
    assert index.n_items == len(vectors) - 1
    assert not (ids == 0).any()
    assert ids.max() <= index.n_items
    if spec.kind != "hnsw":  # exhaustive settings return every item exactly once
        assert (np.sort(ids, axis=1) == np.arange(1, len(vectors))).all()


def test_k_is_capped_at_the_number_of_items() -> None:
    vectors, queries = clustered(50, 3)
    scores, ids = ItemIndex(build_index(vectors, use_gpu=False), vectors).search(queries, 500)
    assert scores.shape == ids.shape == (3, 50)


def test_short_ivf_results_are_minus_one_with_minus_inf_scores(
        ivf_data: tuple[np.ndarray, np.ndarray, faiss.Index]) -> None:
    vectors, queries, raw = ivf_data
    index = ItemIndex(faiss.clone_index(raw), vectors)
    index.nprobe = 1
    scores, ids = index.search(queries[:5], 5_000)  # one list holds far fewer than 5000 items
    missing = ids < 0
    assert missing.any() and (ids[~missing] > 0).all()
    assert np.isneginf(scores[missing]).all() and np.isfinite(scores[~missing]).all()
    # Missing slots come last in each row.
    assert all(np.all(np.diff(row.astype(np.int8)) >= 0) for row in missing)


@pytest.mark.parametrize("spec", [IndexSpec(kind="flat"), IndexSpec(kind="ivf", nlist=32, nprobe=4),
                                  IndexSpec(kind="hnsw", hnsw_m=8, ef_search=40)])
def test_save_load_round_trip(tmp_path: Path, small: tuple[np.ndarray, np.ndarray],
                              spec: IndexSpec) -> None:
    vectors, queries = small
    built = build_index(vectors, spec, use_gpu=False)
    save_index(built, tmp_path / "items.faiss")
    loaded = ItemIndex(load_index(tmp_path / "items.faiss", use_gpu=False), vectors)
    expected_scores, expected_ids = ItemIndex(built, vectors).search(queries, 20)
    scores, ids = loaded.search(queries, 20)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-6)
    assert loaded.kind == spec.kind
    if spec.kind == "ivf":
        assert loaded.nprobe == 4
    if spec.kind == "hnsw":
        assert loaded.ef_search == 40


def test_missing_index_file_raises_artifact_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.faiss"
    with pytest.raises(ArtifactError, match="absent.faiss"):
        load_index(path)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_index_file_raises_artifact_error(tmp_path: Path, small: tuple[np.ndarray, np.ndarray],
                                                  damage: str) -> None:
    path = tmp_path / "items.faiss"
    save_index(build_index(small[0], IndexSpec(kind="ivf", nlist=16, nprobe=2), use_gpu=False),
               path)
    payload = path.read_bytes()
    path.write_bytes(b"\x00not a faiss index" * 8 if damage == "garbage" else payload[:len(payload) // 2])
    with pytest.raises(ArtifactError, match="items.faiss"):
        load_index(path, use_gpu=False)


@pytest.mark.parametrize("k", [0, -1, 2.5, True, None])
def test_bad_k_raises_value_error(small: tuple[np.ndarray, np.ndarray], k: object) -> None:
    vectors, queries = small
    index = ItemIndex(build_index(vectors, use_gpu=False), vectors)
    with pytest.raises(ValueError, match="k must be"):
        index.search(queries, k)  # type: ignore[arg-type]


@pytest.mark.parametrize("make_bad", [
    lambda q: q.astype(np.float64),
    lambda q: q[:, :-1],
    lambda q: q[0],
    lambda q: q.tolist(),
])
def test_bad_queries_raise_value_error(small: tuple[np.ndarray, np.ndarray], make_bad: object
                                       ) -> None:
    vectors, queries = small
    index = ItemIndex(build_index(vectors, use_gpu=False), vectors)
    with pytest.raises(ValueError, match="queries"):
        index.search(make_bad(queries), 5)  # type: ignore[operator]


def test_bad_vectors_raise_value_error(small: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, _ = small
    with pytest.raises(ValueError, match="row 0"):
        build_index(vectors[1:], use_gpu=False)
    with pytest.raises(ValueError, match="vectors must be a float32"):
        build_index(vectors.astype(np.float64), use_gpu=False)
    with pytest.raises(ValueError, match="vectors"):
        ItemIndex(build_index(vectors, use_gpu=False), vectors[:-1])


def test_search_parameters_apply_only_to_their_kind(small: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, _ = small
    flat = ItemIndex(build_index(vectors, use_gpu=False), vectors)
    with pytest.raises(ValueError, match="nprobe"):
        flat.nprobe = 4
    with pytest.raises(ValueError, match="ef_search"):
        flat.ef_search = 64
    ivf = ItemIndex(build_index(vectors, IndexSpec(kind="ivf", nlist=16, nprobe=2), use_gpu=False),
                    vectors)
    ivf.nprobe = 8
    assert ivf.nprobe == 8 and ivf.nlist == 16
    with pytest.raises(ValueError, match="nprobe"):
        ivf.nprobe = 17
    hnsw = ItemIndex(build_index(vectors, IndexSpec(kind="hnsw", hnsw_m=8), use_gpu=False), vectors)
    hnsw.ef_search = 99
    assert hnsw.ef_search == 99
    with pytest.raises(ValueError, match="nprobe"):
        hnsw.nprobe = 4


def test_invalid_spec_raises_value_error() -> None:
    with pytest.raises(ValueError, match="kind"):
        IndexSpec(kind="lsh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nprobe"):
        IndexSpec(kind="ivf", nlist=8, nprobe=9)


def test_threads_argument_sets_faiss_thread_count(small: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, _ = small
    raw = build_index(vectors, use_gpu=False)
    ItemIndex(raw, vectors, threads=2)
    assert faiss.omp_get_max_threads() == 2
    ItemIndex(raw, vectors)
    assert faiss.omp_get_max_threads() == 1
    with pytest.raises(ValueError, match="threads"):
        ItemIndex(raw, vectors, threads=0)


@pytest.mark.skipif(faiss.get_num_gpus() > 0, reason="checks the no-GPU error")
def test_use_gpu_without_gpu_raises_value_error(small: tuple[np.ndarray, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="use_gpu"):
        build_index(small[0], use_gpu=True)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("spec", [IndexSpec(kind="flat"), IndexSpec(kind="ivf", nlist=32, nprobe=8)])
def test_gpu_index_matches_cpu_and_saves_cpu_form(tmp_path: Path, spec: IndexSpec) -> None:
    from recsys.index import is_on_gpu

    vectors, queries = clustered(3_000, 20)
    gpu = ItemIndex(build_index(vectors, spec, use_gpu=True), vectors)
    assert is_on_gpu(gpu.index)
    cpu = ItemIndex(build_index(vectors, spec, use_gpu=False), vectors)
    gpu_scores, gpu_ids = gpu.search(queries, 50)
    cpu_scores, cpu_ids = cpu.search(queries, 50)
    assert not (gpu_ids == 0).any()
    np.testing.assert_allclose(gpu_scores, cpu_scores, rtol=1e-4, atol=1e-4)
    assert (gpu_ids == cpu_ids).mean() > 0.99  # ties may order differently
    _, all_ids = gpu.search(queries[:2], 3_000)  # above the GPU's k limit: served from a CPU copy
    assert all_ids.shape == (2, 3_000) and not (all_ids == 0).any()
    if spec.kind == "ivf":
        gpu.nprobe = 16
        assert gpu.nprobe == 16
    save_index(gpu.index, tmp_path / "gpu.faiss")
    reloaded = load_index(tmp_path / "gpu.faiss", use_gpu=False)
    assert not is_on_gpu(reloaded)
    np.testing.assert_array_equal(ItemIndex(reloaded, vectors).search(queries, 50)[1], cpu_ids)
