"""The registry as serving reads it, against a real MLflow tracking server: aliases, bundles from
the file store and through the server's artifact proxy, verified; failures named."""
from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pytest

from devtools.local_redis import free_port
from recsys.errors import ArtifactError
from recsys.models import artifacts
from recsys.models.registry_client import (
    AliasedSet,
    RegisteredVersion,
    RegistryClient,
    RegistryUnavailableError,
    model_tag,
)
from registry import ModelNames, log_bundle, register_model_set
from tests.support.bundle_factory import input_example, make_embedding_bundle, make_ranker_bundle
from tests.support.fixtures_models import TrainedModels
from tests.support.registry_server import RegistryServer, registry_copy


@pytest.fixture(scope="module")
def server(trained_models: TrainedModels,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with registry_copy(trained_models, tmp_path_factory.mktemp("registry-client")) as server:
        yield server


@pytest.fixture
def client(server: RegistryServer, tmp_path: Path) -> Iterator[RegistryClient]:
    client = RegistryClient(server.url, tmp_path / "cache")
    yield client
    client.close()


def test_aliases_read_as_the_tags_the_bento_export_gives(client: RegistryClient,
                                                         trained_models: TrainedModels) -> None:
    exported = json.loads(trained_models.models_file.read_text())

    for alias in ("champion", "challenger"):
        aliased = client.aliased_set(alias)
        assert aliased is not None and aliased.tags == exported[alias]
        aliased.check_pairing()
    assert client.aliased_set("no-such-alias") is None


def test_a_bundle_is_fetched_verified_and_kept(client: RegistryClient) -> None:
    aliased = client.aliased_set("champion")
    assert aliased is not None
    ranker = aliased.versions["ranker"]

    path = client.fetch(ranker, "ranker")

    assert path.parent == client.cache_dir and (path / artifacts.RANKER).is_file()
    assert artifacts.read_manifest(path, "ranker").fingerprint() == ranker.fingerprint
    assert client.fetch(ranker, "ranker") == path  # kept: verified again, not downloaded again
    with (path / artifacts.SCALER).open("a") as altered:
        altered.write(" ")
    with pytest.raises(ArtifactError, match="checksum mismatch for scaler.json"):
        client.fetch(ranker, "ranker")


def test_workers_sharing_a_cache_fetch_the_same_bundle_at_once(server: RegistryServer,
                                                               tmp_path: Path) -> None:
    """Every worker of a service polls alone: two of them download a new version together, and
    the one that renames its download second uses the first one's."""
    clients = [RegistryClient(server.url, tmp_path / "shared") for _ in range(4)]
    try:
        aliased = clients[0].aliased_set("challenger")
        assert aliased is not None
        version = aliased.versions["embedding"]
        with ThreadPoolExecutor(len(clients)) as pool:
            paths = list(pool.map(lambda c: c.fetch(version, "embedding"), clients))
    finally:
        for client in clients:
            client.close()

    assert len(set(paths)) == 1
    assert [p.name for p in (tmp_path / "shared").iterdir()] == [paths[0].name]  # no leftovers


def test_a_bundle_of_another_kind_is_refused(client: RegistryClient) -> None:
    aliased = client.aliased_set("champion")
    assert aliased is not None

    with pytest.raises(ArtifactError, match="holds a 'ranker' bundle, expected 'embedding'"):
        client.fetch(aliased.versions["ranker"], "embedding")


def test_bundles_logged_through_the_server_come_through_its_artifact_proxy(
        server: RegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = ModelNames.with_prefix("proxied-")
    embedding = make_embedding_bundle(tmp_path / "embedding")
    make_ranker_bundle(tmp_path / "ranker", embedding.fingerprint())
    make_ranker_bundle(tmp_path / "fallback", embedding.fingerprint(), kind="fallback_ranker")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    mlflow.set_tracking_uri(server.url)
    try:
        mlflow.set_experiment("proxied")  # a new experiment on the server: mlflow-artifacts:/
        with mlflow.start_run():
            uris = [log_bundle(tmp_path / sub, kind, input_example(tmp_path / sub))
                    for sub, kind in (("embedding", "embedding"), ("ranker", "ranker"),
                                      ("fallback", "fallback_ranker"))]
        register_model_set(*uris, alias="challenger", names=names)
    finally:
        mlflow.set_tracking_uri(None)
    client = RegistryClient(server.url, tmp_path / "cache", names=names.by_kind())

    aliased = client.aliased_set("challenger")
    assert aliased is not None
    path = client.fetch(aliased.versions["embedding"], "embedding")

    assert artifacts.read_manifest(path).fingerprint() == embedding.fingerprint()
    assert any(server.artifacts.rglob(artifacts.MANIFEST))  # the files went through the proxy
    client.close()


def test_a_ranker_paired_with_another_embedding_version_is_refused() -> None:
    versions = {"embedding": RegisteredVersion("e", "3", {"fingerprint": "a" * 16}),
                "ranker": RegisteredVersion("r", "4", {"embedding_version": "2"}),
                "fallback_ranker": RegisteredVersion("f", "4", {"embedding_version": "3"})}

    with pytest.raises(ArtifactError, match="r version 4 pairs with embedding version 2, not 3"):
        AliasedSet("champion", versions).check_pairing()


def test_an_unreachable_registry_is_named(tmp_path: Path) -> None:
    client = RegistryClient(f"http://127.0.0.1:{free_port()}", tmp_path, timeout_s=2.0)

    with pytest.raises(RegistryUnavailableError, match="registry http://127.0.0.1"):
        client.aliased_set("champion")
    client.close()


def test_only_a_tracking_server_is_accepted(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be an MLflow tracking server"):
        RegistryClient("sqlite:///mlruns.db", tmp_path)


@pytest.mark.parametrize("files", [{"../outside": "x"}, {"/etc/passwd": "x"}])
def test_a_manifest_naming_files_outside_its_bundle_is_refused(files: dict[str, str]) -> None:
    manifest = json.dumps({"kind": "ranker", "format_version": 1, "files": files})

    with pytest.raises(ArtifactError, match="relative paths inside the bundle"):
        artifacts.parse_manifest(manifest)


def test_model_tags_name_the_model_version_and_content() -> None:
    assert model_tag("recsys-ranker", "3", "1a2b3c4d5e6f") == "recsys-ranker:v3-1a2b3c4d"
