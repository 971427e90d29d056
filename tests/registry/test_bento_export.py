"""Export of the aliased model set into a BentoML model store under tmp_path.

BentoML reads BENTOML_HOME once per process and caches its model store, so these tests never
set the variable: `export_to_bentoml(..., home=...)` and `bentoml_home(...)` swap the store in
BentoML's container for the duration of a call. The CLI tests cover BENTOML_HOME in a subprocess.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bentoml
import pytest

from recsys.errors import ArtifactError
from recsys.models import artifacts
from recsys.models.registry_client import model_tag
from registry import (
    CHAMPION,
    ModelNames,
    ModelSet,
    Registry,
    bento_models_for_alias,
    bentoml_home,
    export_to_bentoml,
    register_model_set,
)
from tests.support.bundle_factory import log_model_set, tracking_store

# bentoml 1.4.39 builds a pathspec "gitwildmatch" pattern when bentoml.models is first imported;
# pathspec 1.x deprecates that name. Third-party and harmless; only that message is ignored.
pytestmark = pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")


@dataclass(frozen=True)
class Store:
    uri: str
    root: Path
    uris: dict[str, str]  # kind -> logged model URI


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    root = tmp_path_factory.mktemp("bento-export")
    with tracking_store(root) as uri:
        yield Store(uri, root, log_model_set(root / "set", seed=0))


def _champion(store: Store, prefix: str) -> tuple[Registry, ModelSet]:
    names = ModelNames.with_prefix(prefix)
    registry = Registry(store.uri, names)
    model_set = register_model_set(store.uris["embedding"], store.uris["ranker"],
                                   store.uris["fallback_ranker"], alias=None, names=names)
    registry.promote_versions(model_set)
    return registry, model_set


def test_export_labels_metadata_and_verified_copy(store: Store, tmp_path: Path) -> None:
    registry, model_set = _champion(store, "labels-")
    default_home = Path.home() / "bentoml"
    default_home_existed = default_home.exists()

    tags = export_to_bentoml(registry, CHAMPION, home=tmp_path)

    assert tags == {kind: model_tag(name, version, registry.version_metadata(name, version)["fingerprint"])
                    for kind, name, version in model_set.items()}
    assert all(tag.split(":")[1].startswith(f"v{version}-")
               for tag, (_, _, version) in zip(tags.values(), model_set.items()))
    assert bento_models_for_alias(registry, CHAMPION) == tags
    with bentoml_home(tmp_path):
        for kind, name, version in model_set.items():
            model = bentoml.models.get(tags[kind])
            assert model.info.labels == {"mlflow_model": name, "mlflow_version": version,
                                         "alias": CHAMPION}
            manifest = artifacts.read_manifest(Path(model.path), expected_kind=kind, verify=True)
            assert model.info.metadata["fingerprint"] == manifest.fingerprint()
            assert model.info.metadata["kind"] == kind
            assert Path(model.path).is_relative_to(tmp_path)
    assert default_home.exists() == default_home_existed


def test_reexport_is_idempotent(store: Store, tmp_path: Path) -> None:
    registry, _ = _champion(store, "idempotent-")
    first = export_to_bentoml(registry, home=tmp_path)
    with bentoml_home(tmp_path):
        created = {tag: bentoml.models.get(tag).info.creation_time for tag in first.values()}

    assert export_to_bentoml(registry, home=tmp_path) == first
    with bentoml_home(tmp_path):
        assert {tag: bentoml.models.get(tag).info.creation_time for tag in first.values()} == created
        assert len(bentoml.models.list()) == 3


def test_corrupted_registry_artifact_is_detected(store: Store, tmp_path: Path) -> None:
    # Own logged models: the corruption must not leak into the other tests' bundles.
    with tracking_store(tmp_path / "mlflow") as uri:
        uris = log_model_set(tmp_path / "set", seed=3)
        names = ModelNames.with_prefix("corrupt-")
        registry = Registry(uri, names)
        registry.promote_versions(register_model_set(
            uris["embedding"], uris["ranker"], uris["fallback_ranker"], names=names))
        source = Path(registry.client.get_model_version_download_uri(names.ranker, "1")
                      .removeprefix("file://"))
        [onnx_file] = source.rglob(artifacts.RANKER)
        onnx_file.write_bytes(onnx_file.read_bytes() + b"tampered")

        with pytest.raises(ArtifactError, match="checksum mismatch for ranker.onnx"):
            export_to_bentoml(registry, home=tmp_path / "bentoml")
    with bentoml_home(tmp_path / "bentoml"):
        assert bentoml.models.list() == []  # verified before anything was written


def test_corrupted_store_copy_is_detected_on_reexport(store: Store, tmp_path: Path) -> None:
    registry, _ = _champion(store, "store-copy-")
    tags = export_to_bentoml(registry, home=tmp_path)
    with bentoml_home(tmp_path):
        stored = Path(bentoml.models.get(tags["embedding"]).path) / artifacts.ITEM_VECTORS
    stored.write_bytes(b"not the vectors")

    with pytest.raises(ArtifactError, match=f"checksum mismatch for {artifacts.ITEM_VECTORS}"):
        export_to_bentoml(registry, home=tmp_path)


def test_existing_tag_with_other_content_is_refused(store: Store, tmp_path: Path) -> None:
    registry, _ = _champion(store, "clash-")
    ranker_tag = bento_models_for_alias(registry, CHAMPION)["ranker"]
    with bentoml_home(tmp_path), bentoml.models.create(
            ranker_tag, metadata={"fingerprint": "0123456789abcdef"}):
        pass

    with pytest.raises(ArtifactError, match="already exists with fingerprint 0123456789abcdef"):
        export_to_bentoml(registry, home=tmp_path)
    with bentoml_home(tmp_path):
        assert [str(m.tag) for m in bentoml.models.list()] == [ranker_tag]  # nothing else written
