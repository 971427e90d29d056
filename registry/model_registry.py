"""Reading the registry and moving aliases: promote, rollback, resolve, download."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from recsys.errors import ArtifactError, IncompatibleModelsError
from recsys.models import artifacts
from recsys.models.registry_client import (
    BUNDLE_ARTIFACT,
    CHALLENGER,
    CHAMPION,
    PREVIOUS_CHAMPION,
    TAG_EMBEDDING_VERSION,
    TAG_FINGERPRINT,
)
from registry.registration import (
    TAG_DATA_FINGERPRINT,
    TAG_EMBEDDING_FINGERPRINT,
    ModelNames,
    ModelSet,
    RegistryError,
    logged_bundle,
)


class AlreadyChampion(RegistryError):
    """A promotion that would change nothing: refused, nothing moved."""


def _versions(model_set: ModelSet) -> str:
    return ", ".join(f"{name} v{version}" for _, name, version in model_set.items())


@dataclass(frozen=True)
class VersionInfo:
    """One registered model version as the CLI and the export show it."""

    name: str
    version: str
    aliases: tuple[str, ...]
    run_id: str | None
    tags: dict[str, str]
    created: datetime  # UTC


class Registry:
    """The three registered models of a set and their aliases in one MLflow registry."""

    def __init__(self, tracking_uri: str | None = None, names: ModelNames | None = None) -> None:
        self.tracking_uri = tracking_uri or mlflow.get_tracking_uri()
        self.names = names or ModelNames()
        self.client = mlflow.MlflowClient(tracking_uri=self.tracking_uri,
                                          registry_uri=self.tracking_uri)

    # --- reading -------------------------------------------------------------------------
    def _aliases(self, name: str) -> dict[str, str]:
        """alias -> version of a registered model; {} when the model is not registered."""
        try:
            return dict(self.client.get_registered_model(name).aliases)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise

    def list_versions(self, name: str) -> list[VersionInfo]:
        """Every version of `name`, newest first; [] when the model is not registered."""
        by_version: dict[str, list[str]] = {}
        for alias, version in self._aliases(name).items():
            by_version.setdefault(str(version), []).append(alias)
        found = self.client.search_model_versions(f"name = '{name}'")
        infos = [VersionInfo(
            name=name, version=str(mv.version),
            aliases=tuple(sorted(by_version.get(str(mv.version), []))),
            run_id=mv.run_id or None, tags=dict(mv.tags),
            created=datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=timezone.utc),
        ) for mv in found]
        return sorted(infos, key=lambda info: int(info.version), reverse=True)

    def _version_by_alias(self, name: str, alias: str) -> str | None:
        return self._aliases(name).get(alias)

    def resolve(self, alias: str) -> ModelSet:
        """Versions that `alias` points to in all three models; RegistryError names any missing."""
        versions = {name: self._version_by_alias(name, alias)
                    for name in self.names.by_kind().values()}
        missing = [name for name, version in versions.items() if version is None]
        if missing:
            raise RegistryError(f"alias {alias!r} is not set on registered model(s) "
                                f"{', '.join(missing)}")
        embedding, ranker, fallback = (str(v) for v in versions.values())
        return ModelSet(embedding, ranker, fallback, names=self.names)

    def alias_exists(self, alias: str) -> bool:
        """True when all three models have a version under `alias`."""
        return all(self._version_by_alias(name, alias) is not None
                   for name in self.names.by_kind().values())

    def champion_exists(self) -> bool:
        """True when all three models have a champion."""
        return self.alias_exists(CHAMPION)

    def _model_version(self, name: str, version: str) -> ModelVersion:
        try:
            return self.client.get_model_version(name, version)
        except MlflowException as exc:
            raise RegistryError(f"registered model {name!r} has no version {version!r}") from exc

    def check_compatible(self, model_set: ModelSet) -> None:
        """IncompatibleModelsError unless both rankers are tagged with the set's embedding."""
        embedding = self._model_version(model_set.names.embedding, model_set.embedding)
        for _, name, version in list(model_set.items())[1:]:
            tags = self._model_version(name, version).tags
            paired = tags.get(TAG_EMBEDDING_VERSION)
            if paired != model_set.embedding:
                raise IncompatibleModelsError(
                    f"{name} version {version} pairs with {model_set.names.embedding} version "
                    f"{paired}, not version {model_set.embedding} (tag {TAG_EMBEDDING_VERSION!r})")
            trained_on = tags.get(TAG_EMBEDDING_FINGERPRINT)
            fingerprint = embedding.tags.get(TAG_FINGERPRINT)
            if trained_on and fingerprint and trained_on != fingerprint:
                raise IncompatibleModelsError(
                    f"{name} version {version} was trained against embedding {trained_on}, but "
                    f"{model_set.names.embedding} version {model_set.embedding} is {fingerprint}")

    def check_not_champion(self, model_set: ModelSet) -> None:
        """AlreadyChampion when `model_set` is the champion's versions or bundles."""
        if not self.champion_exists():
            return
        champion = self.resolve(CHAMPION)
        if champion == model_set:
            raise AlreadyChampion(f"versions {_versions(model_set)} are the champion already: "
                                  "nothing to promote")
        if self.fingerprints(champion) == self.fingerprints(model_set):
            raise AlreadyChampion(f"versions {_versions(model_set)} hold the champion's models "
                                  f"bit for bit ({_versions(champion)}): nothing to promote")

    def data_fingerprint(self, model_set: ModelSet) -> str | None:
        """The fingerprint of the data the set's embedding was trained on (None: not recorded)."""
        tags = self._model_version(model_set.names.embedding, model_set.embedding).tags
        return tags.get(TAG_DATA_FINGERPRINT)

    def ranker_features(self, model_set: ModelSet) -> list[str] | None:
        """The dense features the set's ranker was trained on, as its logged bundle records
        them (None: not recorded). Reads the model's metadata, not its files."""
        source = self._model_version(model_set.names.ranker, model_set.ranker).source
        if source is None:
            return None
        features = logged_bundle(source, "ranker").get("bundle", {}).get("dense_features")
        return None if features is None else [str(f) for f in features]

    def sets_trained_on(self, data_fingerprint: str) -> list[ModelSet]:
        """Every complete set whose models were trained on that data, newest first."""
        names = self.names
        embeddings = self.client.search_model_versions(
            f"name = '{names.embedding}' and tags.{TAG_DATA_FINGERPRINT} = '{data_fingerprint}'")
        found = []
        for embedding in sorted(embeddings, key=lambda v: int(v.version), reverse=True):
            ranker, fallback = (self._newest_paired(name, str(embedding.version))
                                for name in (names.ranker, names.fallback))
            if ranker and fallback:
                found.append(ModelSet(str(embedding.version), ranker, fallback, names=names))
        return found

    def _newest_paired(self, name: str, embedding_version: str) -> str:
        paired = self.client.search_model_versions(
            f"name = '{name}' and tags.{TAG_EMBEDDING_VERSION} = '{embedding_version}'")
        return max((str(v.version) for v in paired), key=int, default="")

    def fingerprints(self, model_set: ModelSet) -> dict[str, str]:
        return {kind: self._model_version(name, version).tags.get(TAG_FINGERPRINT, "")
                for kind, name, version in model_set.items()}

    # --- moving aliases ------------------------------------------------------------------
    def set_aliases(self, model_set: ModelSet, alias: str) -> None:
        for _, name, version in model_set.items():
            self.client.set_registered_model_alias(name, alias, version)

    def promote(self, source_alias: str = CHALLENGER) -> ModelSet:
        """Make the `source_alias` set champion (old champion -> previous_champion).

        The source alias is removed afterwards (the challenger has become the champion).
        Nothing moves when the set is incompatible or an alias is missing.
        """
        model_set = self.resolve(source_alias)
        self.promote_versions(model_set)
        if source_alias not in (CHAMPION, PREVIOUS_CHAMPION):
            for _, name, _version in model_set.items():
                self.client.delete_registered_model_alias(name, source_alias)
        return model_set

    def promote_versions(self, model_set: ModelSet) -> ModelSet:
        """Make explicit versions champion; a model whose champion changes keeps it as
        previous_champion. Compatibility is checked before any alias moves; AlreadyChampion
        (nothing moves) when the set is the champion, or holds the same bundles."""
        self.check_compatible(model_set)
        self.check_not_champion(model_set)
        for _, name, version in model_set.items():
            current = self._version_by_alias(name, CHAMPION)
            if current is not None and current != version:
                self.client.set_registered_model_alias(name, PREVIOUS_CHAMPION, current)
            self.client.set_registered_model_alias(name, CHAMPION, version)
        return model_set

    def rollback(self) -> ModelSet:
        """Swap champion and previous_champion on all three models; returns the new champion.

        Rolling back twice restores the original champion.
        """
        try:
            previous = self.resolve(PREVIOUS_CHAMPION)
            champion = self.resolve(CHAMPION)
        except RegistryError as exc:
            raise RegistryError(f"nothing to roll back: {exc}") from None
        self.check_compatible(previous)
        self.set_aliases(previous, CHAMPION)
        self.set_aliases(champion, PREVIOUS_CHAMPION)
        return previous

    # --- artifacts -----------------------------------------------------------------------
    def version_of(self, name: str, alias_or_version: str) -> str:
        """A version number as given, or the version an alias points to."""
        if alias_or_version.isdigit():
            return str(self._model_version(name, alias_or_version).version)
        version = self._version_by_alias(name, alias_or_version)
        if version is None:
            raise RegistryError(f"alias {alias_or_version!r} is not set on registered model "
                                f"{name}")
        return str(version)

    def download(self, name: str, alias_or_version: str, dest: Path) -> Path:
        """Download a version's pyfunc model under `dest`; returns its bundle directory.

        The bundle's manifest is verified (ArtifactError names a missing or altered file).
        """
        version = self.version_of(name, alias_or_version)
        source = self.client.get_model_version_download_uri(name, version)
        dest.mkdir(parents=True, exist_ok=True)
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(dest), tracking_uri=self.tracking_uri))
        bundle = local / _bundle_subpath(local)
        artifacts.read_manifest(bundle, verify=True)
        return bundle

    def version_metadata(self, name: str, version: str) -> dict[str, Any]:
        """Tags of a version plus its name and version, for labels and display."""
        return {"name": name, "version": version, **self._model_version(name, version).tags}


def _bundle_subpath(model_dir: Path) -> str:
    """Where the pyfunc model keeps the bundle artifact, read from its MLmodel file."""
    flavor = Model.load(str(model_dir)).flavors.get("python_function", {})
    entry = flavor.get("artifacts", {}).get(BUNDLE_ARTIFACT)
    if entry is None:
        raise ArtifactError(f"{model_dir} is not a bundle model: MLmodel has no "
                            f"{BUNDLE_ARTIFACT!r} artifact")
    return entry["path"]
