"""Bundles as served: the user-tower-only load answers like the full embedding bundle; every
loaded session is checked against the outputs training recorded."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from recsys.errors import ArtifactError
from recsys.models import artifacts, bundles
from recsys.models.bundles import EmbeddingBundle, RankerBundle, UserTowerBundle
from recsys.models.neighbours import ItemNeighbours
from tests.support.bundle_factory import make_embedding_bundle, make_ranker_bundle
from tests.support.fixtures_models import TrainedModels


def test_the_user_tower_bundle_encodes_like_the_embedding_bundle(
        trained_models: TrainedModels) -> None:
    path = trained_models.refs().paths["embedding"]
    full, tower = EmbeddingBundle.load(path), UserTowerBundle.load(path)
    assert full.users is not None and tower.history_len == full.history_len
    history, attributes = full.users.histories[:16], full.users.attributes[:16]
    np.testing.assert_array_equal(tower.encode_users(history, attributes),
                                  full.encode_users(history, attributes))


def test_many_users_are_encoded_in_chunks_with_the_vectors_of_one_call(
        trained_models: TrainedModels, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trained (sequence) tower over every user of the set: in chunks of 7 rows, the
    vectors of one call, bit for bit (the chunks hold ONNX Runtime's arena down)."""
    full = EmbeddingBundle.load(trained_models.refs().paths["embedding"])
    assert full.users is not None
    history, attributes = full.users.histories, full.users.attributes
    whole = full.encode_users(history, attributes)
    monkeypatch.setattr(bundles, "USER_TOWER_CHUNK", 7)
    assert len(history) > 2 * 7
    chunked = full.encode_users(history, attributes)
    assert chunked.shape == whole.shape and chunked.dtype == np.float32
    np.testing.assert_array_equal(chunked, whole)


def test_the_embedding_manifest_records_the_index_recall_on_its_users(
        trained_models: TrainedModels) -> None:
    path = trained_models.refs().paths["embedding"]
    manifest = artifacts.read_manifest(path, "embedding")
    assert manifest.metadata["index_kind"] in ("flat", "ivf", "hnsw")
    assert manifest.metadata["index_recall_at_100_on_users"] >= 0.95


def test_an_embedding_bundle_loaded_without_its_user_tower_says_so(
        trained_models: TrainedModels) -> None:
    path = trained_models.refs().paths["embedding"]
    bundle = EmbeddingBundle.load(path, load_user_tower=False)
    assert bundle.user_tower is None and bundle.index.n_items == bundle.catalog.size
    assert bundle.users is not None
    with pytest.raises(ArtifactError, match="without its user tower"):
        bundle.encode_users(bundle.users.histories[:1], bundle.users.attributes[:1])


def test_identical_ranker_files_bound_to_two_embeddings_are_two_models(tmp_path: Path) -> None:
    """Two checkouts sharing one BentoML store once exported a fallback ranker whose files matched
    an earlier one's but whose embedding did not; the shared fingerprint (and so tag) served the
    stale binding and start-up failed. The binding is part of the fingerprint now."""
    from tests.support.bundle_factory import make_ranker_bundle

    one = make_ranker_bundle(tmp_path / "one", "embedding-one", kind="fallback_ranker")
    two = make_ranker_bundle(tmp_path / "two", "embedding-two", kind="fallback_ranker")

    assert one.files == two.files  # byte-identical bundle files
    assert one.fingerprint() != two.fingerprint()
    assert artifacts.read_manifest(tmp_path / "one").fingerprint() == one.fingerprint()


def test_cpu_serving_loads_the_int8_ranker_and_older_bundles_stay_fp32(
        trained_models: TrainedModels, tmp_path: Path) -> None:
    from recsys.models.bundles import RankerBundle
    from tests.support.bundle_factory import make_ranker_bundle

    path = trained_models.refs().paths["ranker"]
    fp32 = RankerBundle.load(path)
    int8 = RankerBundle.load(path, int8=True, prefer_gpu=False)
    assert (fp32.precision, int8.precision) == ("fp32", "int8")
    assert "int8_max_abs_diff" in int8.manifest.metadata
    features = np.random.default_rng(0).normal(
        size=(200, fp32.session.get_inputs()[0].shape[1])).astype(np.float32)
    a, b = fp32.score(features), int8.score(features)
    assert np.corrcoef(a, b)[0, 1] > 0.98  # the same ordering, give or take
    older = make_ranker_bundle(tmp_path / "older", "embedding")  # no int8 file
    assert RankerBundle.load(tmp_path / "older", int8=True).precision == "fp32"
    assert older.kind == "ranker"


def test_an_ivf_embedding_records_its_item_query_probes_and_serving_searches_with_them(
        tmp_path: Path) -> None:
    """Training measures how few IVF probes item-to-item queries need (tune_item_nprobe on the
    users' recent items) and the served item-to-item source uses that number."""
    from recsys.app.assembly import candidate_sources
    from recsys.pipeline.retrieval import ItemToItemSource, RetrievalQuery
    from recsys.settings import ServingSettings
    from training.bundles import write_embedding_bundle
    from training.config import TwoTowerConfig
    from training.data import SyntheticConfig, generate_synthetic
    from training.index_build import ivf_spec
    from training.steps import prepare_data
    from training.two_tower import build_model, encode_items

    config = TwoTowerConfig(dim=16, hidden=32, epochs=1, history_len=8)
    data = prepare_data(generate_synthetic(SyntheticConfig(n_users=200, n_items=2000)), config)
    model = build_model(data.catalog, data.attributes.cardinalities(), config)
    rng = np.random.default_rng(0)
    history = rng.integers(1, data.catalog.size + 1, (64, config.history_len))
    attributes = np.zeros((64, len(data.attributes.cardinalities())), dtype=np.int64)
    manifest = write_embedding_bundle(
        tmp_path / "embedding", model, data.catalog, data.attributes,
        encode_items(model, data.catalog), history, attributes, {},
        index_spec=ivf_spec(data.catalog.size, nlist=32))

    meta = manifest.metadata
    assert meta["index_kind"] == "ivf"
    assert 1 <= meta["index_item_nprobe"] <= meta["index_nprobe"]
    assert meta["index_item_recall"] >= 0.95 or meta["index_item_nprobe"] == meta["index_nprobe"]
    settings = ServingSettings(models_file=tmp_path / "unused.json", redis_url=None)
    sources = candidate_sources(EmbeddingBundle.load(tmp_path / "embedding"), settings)
    (item_to_item,) = [s for s in sources if isinstance(s, ItemToItemSource)]
    neighbours = item_to_item.neighbours
    assert neighbours.nprobe == meta["index_item_nprobe"]
    # the tuned number, not the default rule's (which scans every list of this small index)
    assert neighbours.nprobe < ivf_spec(data.catalog.size, nlist=32).nprobe
    # training searched every item's neighbours once, with more probes than a request may
    # use (recall 0.99, up to every list): the source reads them
    assert meta["item_neighbours"] == settings.item_to_item_per_seed
    assert meta["index_item_nprobe"] <= meta["item_neighbours_nprobe"] <= 32
    assert meta["item_neighbours_recall"] >= 0.99 or meta["item_neighbours_nprobe"] == 32
    assert neighbours.table is not None
    assert neighbours.table.shape == (data.catalog.size + 1, meta["item_neighbours"])
    assert neighbours.reads_table(settings.item_to_item_per_seed)
    searched = ItemToItemSource(ItemNeighbours(neighbours.index,
                                               meta["item_neighbours_nprobe"]), 5,
                                settings.item_to_item_per_seed)
    for recent in history[:8]:
        query = RetrievalQuery(np.zeros(config.dim, dtype=np.float32), recent)
        np.testing.assert_array_equal(item_to_item(query), searched(query))


def test_every_loaded_session_answers_its_parity_sample_as_training_recorded(
        trained_models: TrainedModels) -> None:
    paths = trained_models.refs().paths
    embedding, tower = EmbeddingBundle.load(paths["embedding"]), UserTowerBundle.load(
        paths["embedding"])
    rankers = [RankerBundle.load(paths["ranker"], int8=int8) for int8 in (False, True)]
    fallback = RankerBundle.load(paths["fallback_ranker"], "fallback_ranker")

    assert [r.precision for r in rankers] == ["fp32", "int8"]
    for bundle in (embedding, tower, *rankers, fallback):
        diff = bundle.check_parity()
        assert diff is not None and diff <= artifacts.PARITY_TOLERANCE
    assert EmbeddingBundle.load(paths["embedding"], load_user_tower=False).check_parity() is None


def test_a_session_that_answers_otherwise_is_refused(trained_models: TrainedModels,
                                                     tmp_path: Path) -> None:
    """Checksums prove the files are the ones written; parity proves this ONNX Runtime still
    computes what training checked (here: a sample whose recorded scores are not the model's)."""
    bundle_dir = tmp_path / "ranker"
    shutil.copytree(trained_models.refs().paths["ranker"], bundle_dir)
    feeds, expected = artifacts.load_parity(bundle_dir, artifacts.RANKER)  # type: ignore[misc]
    artifacts.save_parity(bundle_dir, {artifacts.RANKER: {**feeds, "expected": expected + 0.01}})
    manifest = artifacts.read_manifest(bundle_dir, verify=False)
    artifacts.write_manifest(bundle_dir, "ranker", manifest.metadata)

    ranker = RankerBundle.load(bundle_dir, int8=False)
    with pytest.raises(ArtifactError, match=r"ranker.onnx: differs from the outputs recorded at "
                                            r"training by 1\.00e-02"):
        ranker.check_parity()


def test_bundles_written_before_parity_samples_load_without_the_check(tmp_path: Path) -> None:
    embedding = make_embedding_bundle(tmp_path / "embedding")
    make_ranker_bundle(tmp_path / "ranker", embedding.fingerprint())

    assert EmbeddingBundle.load(tmp_path / "embedding").check_parity() is None
    assert RankerBundle.load(tmp_path / "ranker").check_parity() is None


def test_bundles_without_a_neighbour_table_load_and_a_table_of_other_items_is_refused(
        tmp_path: Path) -> None:
    manifest = make_embedding_bundle(tmp_path / "embedding", n_items=50)
    assert EmbeddingBundle.load(tmp_path / "embedding").item_neighbours is None  # searched
    np.save(tmp_path / "embedding" / artifacts.ITEM_NEIGHBOURS, np.zeros((40, 5), np.int32))
    artifacts.write_manifest(tmp_path / "embedding", "embedding", manifest.metadata)
    with pytest.raises(ArtifactError, match="has 40 rows for 51 item vectors"):
        EmbeddingBundle.load(tmp_path / "embedding")
    np.save(tmp_path / "embedding" / artifacts.ITEM_NEIGHBOURS, np.zeros((51, 5), np.int64))
    artifacts.write_manifest(tmp_path / "embedding", "embedding", manifest.metadata)
    with pytest.raises(ArtifactError, match="expected an int32"):
        EmbeddingBundle.load(tmp_path / "embedding")
