"""The MLflow Model Registry as serving reads it: aliases and versions over MLflow's REST API,
bundles from the artifact store behind it (local files, or the tracking server's artifact
proxy), each verified against its manifest before it is used.

Not MLflow's own client: `mlflow-skinny` would add about 80 MB to the serving image and pins an
OpenTelemetry package that conflicts with BentoML's; this needs four REST calls and httpx.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import httpx
import yaml

from recsys.errors import ArtifactError, RecsysError
from recsys.models import artifacts

CHAMPION, CHALLENGER, PREVIOUS_CHAMPION = "champion", "challenger", "previous_champion"
MODEL_NAMES = {"embedding": "recsys-embedding", "ranker": "recsys-ranker",
               "fallback_ranker": "recsys-fallback-ranker"}  # bundle kind -> registered model
BUNDLE_ARTIFACT = "bundle"  # the pyfunc artifact that holds the bundle directory
TAG_FINGERPRINT = "fingerprint"
TAG_EMBEDDING_VERSION = "embedding_version"
PROXY = "/api/2.0/mlflow-artifacts/artifacts"


class RegistryUnavailableError(RecsysError):
    """The registry did not answer, or answered something this client cannot read."""


def model_tag(name: str, version: str, fingerprint: str) -> str:
    """How a registered version is known when served: `recsys-ranker:v3-1a2b3c4d` (the content
    fingerprint keeps tags unique across stores that both number from 1)."""
    return f"{name}:v{version}-{fingerprint[:8]}"


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return self.tags.get(TAG_FINGERPRINT, "")

    @property
    def tag(self) -> str:
        return model_tag(self.name, self.version, self.fingerprint)


@dataclass(frozen=True)
class AliasedSet:
    """The three versions an alias points to, by bundle kind."""

    alias: str
    versions: dict[str, RegisteredVersion]  # kind -> version

    @property
    def tags(self) -> dict[str, str]:
        """kind -> model tag: what responses report and cache keys hash."""
        return {kind: v.tag for kind, v in self.versions.items()}

    def check_pairing(self) -> None:
        """ArtifactError unless both rankers were registered with this embedding version."""
        embedding = self.versions["embedding"].version
        for kind in ("ranker", "fallback_ranker"):
            paired = self.versions[kind].tags.get(TAG_EMBEDDING_VERSION)
            if paired != embedding:
                raise ArtifactError(f"alias {self.alias!r}: {self.versions[kind].name} version "
                                    f"{self.versions[kind].version} pairs with embedding "
                                    f"version {paired}, not {embedding}")


class RegistryClient:
    """`uri`: an MLflow tracking server (http://host:port). Bundles are kept under `cache_dir`
    by model tag, re-verified whenever they are used again."""

    def __init__(self, uri: str, cache_dir: Path, *, timeout_s: float = 10.0,
                 names: dict[str, str] | None = None) -> None:
        if urlparse(uri).scheme not in ("http", "https"):
            raise ValueError(f"RECSYS_REGISTRY_URI must be an MLflow tracking server "
                             f"(http://host:port), got {uri!r}")
        self.uri, self.cache_dir = uri.rstrip("/"), cache_dir
        self.names = names or MODEL_NAMES
        self.http = httpx.Client(base_url=self.uri, timeout=timeout_s)

    def aliased_set(self, alias: str) -> AliasedSet | None:
        """What `alias` points to in all three models; None when any of them lacks it."""
        versions = {}
        for kind, name in self.names.items():
            found = self._alias_version(name, alias)
            if found is None:
                return None
            versions[kind] = found
        return AliasedSet(alias, versions)

    def fetch(self, version: RegisteredVersion, kind: str) -> Path:
        """The version's bundle directory in the local cache, downloaded when absent, verified
        against its manifest (ArtifactError names a missing or altered file)."""
        target = self.cache_dir / version.tag.replace(":", "--")
        if not (target / artifacts.MANIFEST).is_file():
            self._download(version, target)
        artifacts.read_manifest(target, expected_kind=kind, verify=True)
        return target

    def promote(self, aliased: AliasedSet) -> None:
        """Make `aliased` the champion, as `python -m registry promote` does: the champion's
        versions become previous_champion, and the promoted alias is removed."""
        current = self.aliased_set(CHAMPION)
        for kind, name in self.names.items():
            version = aliased.versions[kind].version
            if current is not None and current.versions[kind].version != version:
                self._write("POST", name, PREVIOUS_CHAMPION, current.versions[kind].version)
            self._write("POST", name, CHAMPION, version)
            if aliased.alias not in (CHAMPION, PREVIOUS_CHAMPION):
                self._write("DELETE", name, aliased.alias)

    def close(self) -> None:
        self.http.close()

    def _write(self, method: str, name: str, alias: str, version: str | None = None) -> None:
        body = {"name": name, "alias": alias, **({"version": version} if version else {})}
        try:
            response = self.http.request(method, "/api/2.0/mlflow/registered-models/alias",
                                         json=body)
        except httpx.HTTPError as error:
            raise RegistryUnavailableError(f"registry {self.uri}: {error!r}") from error
        if response.status_code != 200:
            raise RegistryUnavailableError(f"registry {self.uri}: {method} alias {alias!r} of "
                                           f"{name} answered {response.status_code}: "
                                           f"{response.text[:300]}")

    def _alias_version(self, name: str, alias: str) -> RegisteredVersion | None:
        body = self._get("/api/2.0/mlflow/registered-models/alias",
                         {"name": name, "alias": alias}, missing_ok=True)
        if body is None:
            return None
        found = body["model_version"]
        tags = {t["key"]: t["value"] for t in found.get("tags", [])}
        return RegisteredVersion(found["name"], str(found["version"]), tags)

    def _download(self, version: RegisteredVersion, target: Path) -> None:
        source = self._get("/api/2.0/mlflow/model-versions/get-download-uri",
                           {"name": version.name, "version": version.version})["artifact_uri"]
        store = artifact_store(source, self)
        bundle = store.bundle_path()
        manifest = artifacts.parse_manifest(store.read(f"{bundle}/{artifacts.MANIFEST}"))
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=self.cache_dir))
        try:
            for name in [artifacts.MANIFEST, *manifest.files]:
                path = staging / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(store.read(f"{bundle}/{name}"))
            try:
                staging.replace(target)  # whole or not at all
            except OSError:
                # another worker sharing the cache renamed its own download there first: that
                # one is used (and verified) instead
                if not (target / artifacts.MANIFEST).is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _get(self, path: str, params: dict[str, str], missing_ok: bool = False) -> Any:
        try:
            response = self.http.get(path, params=params)
        except httpx.HTTPError as error:
            raise RegistryUnavailableError(f"registry {self.uri}: {error!r}") from error
        if missing_ok and absent(response):
            return None
        if response.status_code != 200:
            raise RegistryUnavailableError(f"registry {self.uri}{path} answered "
                                           f"{response.status_code}: {response.text[:300]}")
        return response.json()


def absent(response: httpx.Response) -> bool:
    """MLflow's answer for a model or alias that does not exist: 404, or 400 "not found" (an
    alias)."""
    if response.status_code == 404:
        return True
    try:
        body = response.json()
    except ValueError:
        return False
    return response.status_code == 400 and body.get("error_code") in (
        "RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") and \
        "not found" in str(body.get("message", "")).lower()


class LocalArtifacts:
    """A model's artifacts on a file system this process sees (file:// URIs)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, relative: str) -> bytes:
        try:
            return (self.root / relative).read_bytes()
        except OSError as error:
            raise ArtifactError(f"artifact {self.root / relative}: {error}") from error

    def bundle_path(self) -> str:
        return bundle_path(self.read("MLmodel"))


class ProxiedArtifacts:
    """A model's artifacts behind the tracking server's artifact proxy (mlflow-artifacts:/)."""

    def __init__(self, client: RegistryClient, root: str) -> None:
        self.client, self.root = client, root.strip("/")

    def read(self, relative: str) -> bytes:
        try:
            response = self.client.http.get(f"{PROXY}/{self.root}/{relative}")
        except httpx.HTTPError as error:
            raise RegistryUnavailableError(f"artifact proxy {self.client.uri}: {error!r}") \
                from error
        if response.status_code != 200:
            raise ArtifactError(f"artifact {self.root}/{relative} answered "
                                f"{response.status_code}: {response.text[:200]}")
        return response.content

    def bundle_path(self) -> str:
        return bundle_path(self.read("MLmodel"))


def artifact_store(uri: str, client: RegistryClient) -> LocalArtifacts | ProxiedArtifacts:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return LocalArtifacts(Path(unquote(parsed.path)))
    if parsed.scheme == "mlflow-artifacts":
        return ProxiedArtifacts(client, unquote(parsed.path))
    raise ArtifactError(f"artifacts at {uri!r}: serving reads file:// and mlflow-artifacts:/ "
                        "(run the tracking server with --serve-artifacts)")


def bundle_path(mlmodel: bytes) -> str:
    """Where a pyfunc model keeps its bundle, as its MLmodel file says."""
    document = yaml.safe_load(mlmodel) or {}
    entry = document.get("flavors", {}).get("python_function", {}).get("artifacts", {}) \
        .get(BUNDLE_ARTIFACT)
    if not entry or "path" not in entry:
        raise ArtifactError(f"not a bundle model: MLmodel has no {BUNDLE_ARTIFACT!r} artifact")
    return str(entry["path"])
