"""MLflow registry: logging bundles, registering sets, promotion, rollback, pyfunc loading."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from recsys.errors import ArtifactError, IncompatibleModelsError
from recsys.models import artifacts
from registry import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS_CHAMPION,
    AlreadyChampion,
    ModelNames,
    ModelSet,
    Registry,
    RegistryError,
    log_bundle,
    register_model_set,
)
from registry.registration import _local_store_dir
from tests.support.bundle_factory import input_example, log_model_set, tracking_store


@dataclass(frozen=True)
class Store:
    uri: str
    root: Path
    set_a: dict[str, str]  # kind -> logged model URI, embedding A and rankers trained on it
    set_b: dict[str, str]  # a second, independent set


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    root = tmp_path_factory.mktemp("registry")
    with tracking_store(root) as uri:
        yield Store(uri, root, log_model_set(root / "a", seed=0), log_model_set(root / "b", seed=1))


@pytest.fixture
def names(request: pytest.FixtureRequest) -> ModelNames:
    """Registered model names private to one test, so tests share the store but not aliases."""
    return ModelNames.with_prefix(f"{request.node.name.replace('_', '-')}-")


def _register(uris: dict[str, str], names: ModelNames, alias: str | None = CHALLENGER) -> ModelSet:
    return register_model_set(uris["embedding"], uris["ranker"], uris["fallback_ranker"],
                              alias=alias, names=names)


def _aliases(registry: Registry) -> dict[str, dict[str, tuple[str, ...]]]:
    return {name: {info.version: info.aliases for info in registry.list_versions(name)}
            for name in registry.names.by_kind().values()}


def test_configure_tracking_uses_local_sqlite_and_mlartifacts(store: Store) -> None:
    assert store.uri == f"sqlite:///{(store.root / 'mlruns.db').resolve()}"
    experiment = mlflow.get_experiment_by_name("recsys")
    assert experiment.artifact_location == (store.root / "mlartifacts").resolve().as_uri()
    assert any((store.root / "mlartifacts").rglob(artifacts.MANIFEST))


def test_register_sets_alias_and_pairing_tags(store: Store, names: ModelNames) -> None:
    model_set = _register(store.set_a, names, alias=CHALLENGER)
    registry = Registry(store.uri, names)

    assert registry.resolve(CHALLENGER) == model_set
    [ranker] = registry.list_versions(names.ranker)
    embedding_fp = mlflow.models.get_model_info(store.set_a["embedding"]).metadata["fingerprint"]
    assert ranker.aliases == (CHALLENGER,)
    assert ranker.run_id
    assert ranker.tags["embedding_version"] == model_set.embedding
    assert ranker.tags["embedding_fingerprint"] == embedding_fp
    [fallback] = registry.list_versions(names.fallback)
    assert fallback.tags["embedding_version"] == model_set.embedding
    assert not registry.champion_exists()


def test_register_refuses_rankers_of_another_embedding(store: Store, names: ModelNames) -> None:
    with pytest.raises(IncompatibleModelsError, match="trained against embedding"):
        register_model_set(store.set_b["embedding"], store.set_a["ranker"],
                           store.set_a["fallback_ranker"], names=names)
    assert Registry(store.uri, names).list_versions(names.embedding) == []


def test_promote_moves_champion_and_keeps_previous(store: Store, names: ModelNames) -> None:
    registry = Registry(store.uri, names)
    first = _register(store.set_a, names)
    assert registry.promote() == first
    assert registry.resolve(CHAMPION) == first
    assert registry.champion_exists()
    with pytest.raises(RegistryError):
        registry.resolve(CHALLENGER)  # the challenger has become the champion

    second = _register(store.set_b, names)
    registry.promote(CHALLENGER)
    assert registry.resolve(CHAMPION) == second
    assert registry.resolve(PREVIOUS_CHAMPION) == first


def test_registering_the_same_models_again_adds_no_versions(store: Store,
                                                             names: ModelNames) -> None:
    registry = Registry(store.uri, names)
    first = _register(store.set_a, names, alias=None)
    again = _register(store.set_a, names)  # the same logged models: the same bundles

    assert first.new and not again.new and again == first
    assert [info.version for info in registry.list_versions(names.ranker)] == [first.ranker]
    assert registry.resolve(CHALLENGER) == first  # the alias still moves to them


def test_promoting_the_champion_is_refused_and_moves_nothing(store: Store,
                                                             names: ModelNames) -> None:
    registry = Registry(store.uri, names)
    champion = _register(store.set_a, names)
    registry.promote()
    registry.set_aliases(champion, CHALLENGER)  # a challenger that is the champion

    with pytest.raises(AlreadyChampion, match="are the champion already: nothing to promote"):
        registry.promote(CHALLENGER)
    assert registry.resolve(CHAMPION) == champion
    assert not registry.alias_exists(PREVIOUS_CHAMPION)


def test_promoting_the_champions_models_under_other_versions_is_refused(
        store: Store, names: ModelNames) -> None:
    """Versions registered bit for bit again (by a store older than the de-duplication, or by
    hand) are not a new champion either."""
    registry = Registry(store.uri, names)
    champion = _register(store.set_a, names)
    registry.promote()
    copies: dict[str, str] = {}
    for kind, name, version in champion.items():  # the embedding first: the rankers pair with it
        source = registry.client.get_model_version(name, version)
        tags = {**source.tags, **({"embedding_version": copies["embedding"]} if copies else {})}
        copies[kind] = str(mlflow.register_model(source.source, name, tags=tags).version)
    duplicate = ModelSet(copies["embedding"], copies["ranker"], copies["fallback_ranker"], names)

    with pytest.raises(AlreadyChampion, match="hold the champion's models bit for bit"):
        registry.promote_versions(duplicate)
    assert registry.resolve(CHAMPION) == champion


def test_rollback_twice_restores(store: Store, names: ModelNames) -> None:
    registry = Registry(store.uri, names)
    first = _register(store.set_a, names, alias=None)
    second = _register(store.set_b, names, alias=None)
    registry.promote_versions(first)
    registry.promote_versions(second)

    assert registry.rollback() == first
    assert (registry.resolve(CHAMPION), registry.resolve(PREVIOUS_CHAMPION)) == (first, second)
    assert registry.rollback() == second
    assert (registry.resolve(CHAMPION), registry.resolve(PREVIOUS_CHAMPION)) == (second, first)


def test_rollback_without_previous_champion_raises(store: Store, names: ModelNames) -> None:
    registry = Registry(store.uri, names)
    registry.promote_versions(_register(store.set_a, names, alias=None))
    with pytest.raises(RegistryError, match="nothing to roll back.*previous_champion"):
        registry.rollback()


def test_incompatible_promotion_moves_no_alias(store: Store, names: ModelNames) -> None:
    registry = Registry(store.uri, names)
    old = _register(store.set_a, names)
    registry.promote()
    new = _register(store.set_b, names)
    # A half-updated challenger: new embedding, but the rankers still pair with the old one.
    registry.client.set_registered_model_alias(names.ranker, CHALLENGER, old.ranker)
    before = _aliases(registry)

    with pytest.raises(IncompatibleModelsError) as raised:
        registry.promote()
    message = str(raised.value)
    assert names.ranker in message and names.embedding in message
    assert f"version {old.embedding}" in message and f"version {new.embedding}" in message
    assert _aliases(registry) == before

    with pytest.raises(IncompatibleModelsError):
        registry.promote_versions(ModelSet(new.embedding, old.ranker, old.fallback, names))
    assert _aliases(registry) == before


def test_resolve_missing_alias_names_model_and_alias(store: Store, names: ModelNames) -> None:
    _register(store.set_a, names, alias=None)
    with pytest.raises(RegistryError, match=f"'{CHAMPION}'.*{names.embedding}"):
        Registry(store.uri, names).resolve(CHAMPION)


def test_logged_model_has_signature_and_input_example(store: Store) -> None:
    info = mlflow.models.get_model_info(store.set_a["embedding"])
    inputs = {spec.name: spec for spec in info.signature.inputs.inputs}
    assert set(inputs) == {"history", "attributes"}
    assert inputs["history"].type == np.dtype(np.int64)
    assert info.signature.outputs.inputs[0].shape == (-1, 8)
    assert info.saved_input_example_info is not None

    ranker = mlflow.models.get_model_info(store.set_a["ranker"])
    assert ranker.signature.outputs.inputs[0].shape == (-1,)
    assert ranker.metadata["kind"] == "ranker"


@pytest.mark.parametrize("kind", ["embedding", "ranker", "fallback_ranker"])
def test_pyfunc_predicts_like_the_onnx_graph(store: Store, kind: str) -> None:
    bundle = store.root / "a" / {"fallback_ranker": "fallback"}.get(kind, kind)
    graph = artifacts.USER_TOWER if kind == "embedding" else artifacts.RANKER
    feeds = input_example(bundle, batch=4, seed=7)
    expected = ort.InferenceSession(str(bundle / graph)).run(None, feeds)[0]

    predicted = mlflow.pyfunc.load_model(store.set_a[kind]).predict(feeds)

    assert predicted.shape == ((4, 8) if kind == "embedding" else (4,))
    np.testing.assert_allclose(predicted, expected.reshape(predicted.shape), rtol=1e-6)


def test_ranker_pyfunc_accepts_a_feature_frame(store: Store) -> None:
    features = input_example(store.root / "a" / "ranker", batch=2)["features"]
    model = mlflow.pyfunc.load_model(store.set_a["ranker"])
    frame = pd.DataFrame({"features": list(features)})
    np.testing.assert_allclose(model.predict(frame), model.predict({"features": features}))


def test_download_returns_verified_bundle(store: Store, names: ModelNames, tmp_path: Path) -> None:
    model_set = _register(store.set_a, names)
    registry = Registry(store.uri, names)

    bundle = registry.download(names.ranker, CHALLENGER, tmp_path / "by-alias")
    same = registry.download(names.ranker, model_set.ranker, tmp_path / "by-version")

    manifest = artifacts.read_manifest(bundle, expected_kind="ranker", verify=True)
    assert manifest.fingerprint() == artifacts.read_manifest(same).fingerprint()
    assert manifest.fingerprint() == registry.list_versions(names.ranker)[0].tags["fingerprint"]
    with pytest.raises(RegistryError, match="no version '99'"):
        registry.download(names.ranker, "99", tmp_path / "missing")


def test_log_bundle_checks_kind_and_active_run(store: Store) -> None:
    bundle = store.root / "a" / "ranker"
    with pytest.raises(RegistryError, match="active MLflow run"):
        log_bundle(bundle, "ranker", input_example(bundle))
    with mlflow.start_run(), pytest.raises(ArtifactError, match="expected 'embedding'"):
        log_bundle(bundle, "embedding", input_example(bundle))


@pytest.mark.parametrize(("uri", "expected"), [
    ("sqlite:////srv/ml/mlruns.db", Path("/srv/ml")),
    ("sqlite:///mlruns.db", Path.cwd()),
    ("file:///srv/ml/mlruns", Path("/srv/ml/mlruns")),
    ("http://tracking:5000", None),
])
def test_artifacts_default_next_to_a_local_store(uri: str, expected: Path | None) -> None:
    assert _local_store_dir(uri) == expected
