"""Tests for recsys.models.index and training.index_build: exactness, padding, persistence, errors."""
from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from recsys.errors import ArtifactError
from recsys.models.index import ItemIndex, load_index, save_index
from tests.support.fixtures_vectors import DIM, clustered
from training.index_build import IndexSpec, build_index, choose_index_spec

pytestmark = pytest.mark.usefixtures("restore_faiss_threads")
needs_gpu = pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="faiss sees no GPU")


def test_choose_index_spec_is_flat_for_small_and_ivf_for_large_catalogues() -> None:
    assert choose_index_spec(10_000, 64).kind == "flat"
    large = choose_index_spec(1_000_000, 64)
    assert large.kind == "ivf" and 1 <= large.nprobe <= large.nlist < 1_000_000


def test_flat_search_equals_brute_force(clustered_small: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, queries = clustered_small
    index = ItemIndex(build_index(vectors, use_gpu=False), vectors)
    assert index.kind == "flat"
    scores, ids = index.search(queries, 10)
    brute = queries @ vectors[1:].T
    expected_ids = np.argsort(-brute, axis=1, kind="stable")[:, :10] + 1
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected_ids - 1, axis=1),
                               rtol=1e-5, atol=1e-5)
    assert scores.dtype == np.float32 and ids.dtype == np.int64


def test_a_per_call_nprobe_overrides_the_index_for_that_call_only(
        clustered_ivf: tuple[np.ndarray, np.ndarray, faiss.Index]) -> None:
    vectors, queries, raw = clustered_ivf
    index = ItemIndex(faiss.clone_index(raw), vectors)
    index.nprobe = index.nlist  # exhaustive: the exact answer
    exact = index.search(queries[:20], 100)[1]
    one_list = index.search(queries[:20], 100, nprobe=1)[1]
    assert (one_list != exact).any() and index.nprobe == index.nlist
    np.testing.assert_array_equal(index.search(queries[:20], 100)[1], exact)


@pytest.mark.parametrize("spec", [IndexSpec(kind="flat"), IndexSpec(kind="ivf", nlist=16, nprobe=16),
                                  IndexSpec(kind="hnsw", hnsw_m=8, ef_search=64)])
def test_padding_row_is_never_returned(clustered_small: tuple[np.ndarray, np.ndarray],
                                       spec: IndexSpec) -> None:
    vectors, queries = clustered_small
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
        clustered_ivf: tuple[np.ndarray, np.ndarray, faiss.Index]) -> None:
    vectors, queries, raw = clustered_ivf
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
def test_save_load_round_trip(tmp_path: Path, clustered_small: tuple[np.ndarray, np.ndarray],
                              spec: IndexSpec) -> None:
    vectors, queries = clustered_small
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
def test_corrupt_index_file_raises_artifact_error(tmp_path: Path, clustered_small: tuple[np.ndarray, np.ndarray],
                                                  damage: str) -> None:
    path = tmp_path / "items.faiss"
    save_index(build_index(clustered_small[0], IndexSpec(kind="ivf", nlist=16, nprobe=2), use_gpu=False),
               path)
    payload = path.read_bytes()
    path.write_bytes(b"\x00not a faiss index" * 8 if damage == "garbage" else payload[:len(payload) // 2])
    with pytest.raises(ArtifactError, match="items.faiss"):
        load_index(path, use_gpu=False)


@pytest.mark.parametrize("k", [0, -1, 2.5, True, None])
def test_bad_k_raises_value_error(clustered_small: tuple[np.ndarray, np.ndarray], k: object) -> None:
    vectors, queries = clustered_small
    index = ItemIndex(build_index(vectors, use_gpu=False), vectors)
    with pytest.raises(ValueError, match="k must be"):
        index.search(queries, k)  # type: ignore[arg-type]


@pytest.mark.parametrize("make_bad", [
    lambda q: q.astype(np.float64),
    lambda q: q[:, :-1],
    lambda q: q[0],
    lambda q: q.tolist(),
])
def test_bad_queries_raise_value_error(clustered_small: tuple[np.ndarray, np.ndarray], make_bad: object
                                       ) -> None:
    vectors, queries = clustered_small
    index = ItemIndex(build_index(vectors, use_gpu=False), vectors)
    with pytest.raises(ValueError, match="queries"):
        index.search(make_bad(queries), 5)  # type: ignore[operator]


def test_bad_vectors_raise_value_error(clustered_small: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, _ = clustered_small
    with pytest.raises(ValueError, match="row 0"):
        build_index(vectors[1:], use_gpu=False)
    with pytest.raises(ValueError, match="vectors must be a float32"):
        build_index(vectors.astype(np.float64), use_gpu=False)
    with pytest.raises(ValueError, match="vectors"):
        ItemIndex(build_index(vectors, use_gpu=False), vectors[:-1])


def test_search_parameters_apply_only_to_their_kind(clustered_small: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, _ = clustered_small
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


def test_threads_argument_sets_faiss_thread_count(clustered_small: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, _ = clustered_small
    raw = build_index(vectors, use_gpu=False)
    ItemIndex(raw, vectors, threads=2)
    assert faiss.omp_get_max_threads() == 2
    ItemIndex(raw, vectors)
    assert faiss.omp_get_max_threads() == 1
    with pytest.raises(ValueError, match="threads"):
        ItemIndex(raw, vectors, threads=0)


@pytest.mark.skipif(faiss.get_num_gpus() > 0, reason="checks the no-GPU error")
def test_use_gpu_without_gpu_raises_value_error(clustered_small: tuple[np.ndarray, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="use_gpu"):
        build_index(clustered_small[0], use_gpu=True)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("spec", [IndexSpec(kind="flat"), IndexSpec(kind="ivf", nlist=32, nprobe=8)])
def test_gpu_index_matches_cpu_and_saves_cpu_form(tmp_path: Path, spec: IndexSpec) -> None:
    from recsys.models.index import is_on_gpu

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
