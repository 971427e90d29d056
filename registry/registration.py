"""Logging bundles to MLflow and registering the three models as one versioned set."""
from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow
import numpy as np
from mlflow.models import infer_signature

from recsys.errors import IncompatibleModelsError, RecsysError
from recsys.models import artifacts
from recsys.models.registry_client import (
    BUNDLE_ARTIFACT,
    CHALLENGER,
    MODEL_NAMES,
    TAG_EMBEDDING_VERSION,
    TAG_FINGERPRINT,
)
from registry.pyfunc import model_class

EMBEDDING_MODEL = MODEL_NAMES["embedding"]
RANKER_MODEL = MODEL_NAMES["ranker"]
FALLBACK_MODEL = MODEL_NAMES["fallback_ranker"]
EXPERIMENT = "recsys"
DB_FILE = "mlruns.db"
ARTIFACT_DIR = "mlartifacts"

# Model-version tags written at registration (serving reads the first two back).
TAG_KIND = "kind"
TAG_DATA_FINGERPRINT = "data_fingerprint"  # the training pipeline's provenance tags
TAG_EMBEDDING_FINGERPRINT = "embedding_fingerprint"  # rankers: the embedding they were trained on

LOG = logging.getLogger(__name__)
_RUNTIME_PACKAGES = ("mlflow", "onnxruntime", "numpy", "pandas")


class RegistryError(RecsysError):
    """The registry cannot do what was asked: a missing alias or version, nothing to roll back."""


@dataclass(frozen=True)
class ModelNames:
    """Registered model names of one model set (tests use prefixed names to stay independent)."""

    embedding: str = EMBEDDING_MODEL
    ranker: str = RANKER_MODEL
    fallback: str = FALLBACK_MODEL

    @classmethod
    def with_prefix(cls, prefix: str) -> ModelNames:
        return cls(f"{prefix}{EMBEDDING_MODEL}", f"{prefix}{RANKER_MODEL}",
                   f"{prefix}{FALLBACK_MODEL}")

    def by_kind(self) -> dict[str, str]:
        """Bundle kind -> registered model name."""
        return {"embedding": self.embedding, "ranker": self.ranker,
                "fallback_ranker": self.fallback}


@dataclass(frozen=True)
class ModelSet:
    """Registered versions (strings, as MLflow numbers them) of the three models served together.
    `new` is False when registering found these versions already holding the same content."""

    embedding: str
    ranker: str
    fallback: str
    names: ModelNames = field(default_factory=ModelNames)
    new: bool = field(default=True, compare=False)

    def describe(self) -> str:
        return ", ".join(f"{name} v{version}" for _, name, version in self.items())

    def items(self) -> Iterator[tuple[str, str, str]]:
        """(kind, registered model name, version) for the embedding, ranker and fallback."""
        versions = (self.embedding, self.ranker, self.fallback)
        for (kind, name), version_ in zip(self.names.by_kind().items(), versions):
            yield kind, name, version_


def default_tracking_uri(store_dir: Path) -> str:
    """The local store: sqlite database `<store_dir>/mlruns.db`."""
    return f"sqlite:///{(store_dir / DB_FILE).resolve()}"


def _local_store_dir(tracking_uri: str) -> Path | None:
    """Directory of a local sqlite/file store (where artifacts go by default), else None."""
    if tracking_uri.startswith("sqlite:///"):  # sqlite:///rel.db or sqlite:////abs/path.db
        database = unquote(tracking_uri.removeprefix("sqlite:///").split("?")[0])
        return None if database in ("", ":memory:") else Path(database).absolute().parent
    parsed = urlparse(tracking_uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    return None


def configure_tracking(tracking_uri: str | None = None, artifact_root: Path | None = None, *,
                       store_dir: Path | None = None, experiment: str = EXPERIMENT) -> str:
    """Point MLflow at a tracking store and make `experiment` the active experiment.

    With no `tracking_uri`, the store is `sqlite:///<store_dir>/mlruns.db` (store_dir defaults
    to the working directory). Artifacts of a new experiment go to `artifact_root`, by default
    `<dir>/mlartifacts` next to a local sqlite/file store, or wherever a tracking server puts
    them. An existing experiment keeps its artifact location. Returns the tracking URI.
    """
    uri = tracking_uri or default_tracking_uri(store_dir or Path.cwd())
    if artifact_root is None and (local := _local_store_dir(uri)) is not None:
        artifact_root = local / ARTIFACT_DIR
    mlflow.set_tracking_uri(uri)  # the model registry follows unless MLFLOW_REGISTRY_URI is set
    existing = mlflow.get_experiment_by_name(experiment)
    if existing is None:
        location = artifact_root.resolve().as_uri() if artifact_root is not None else None
        experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
    else:
        experiment_id = existing.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return uri


def _pip_requirements() -> list[str]:
    pins = []
    for package in _RUNTIME_PACKAGES:
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def log_bundle(bundle_dir: Path, kind: str, input_example: Mapping[str, np.ndarray]) -> str:
    """Log a verified bundle as a pyfunc model in the active run; returns its model URI.

    The signature is inferred from `input_example` (dict of input name -> array, e.g. history
    [B, H] and attributes [B, A] for "embedding", features [N, F] for rankers) and the output
    of the real model on it. The model metadata records kind, fingerprint and manifest metadata.
    """
    if mlflow.active_run() is None:
        raise RegistryError("log_bundle needs an active MLflow run: call it inside "
                            "mlflow.start_run()")
    manifest = artifacts.read_manifest(bundle_dir, expected_kind=kind, verify=True)
    cls = model_class(kind)
    example = {name: np.asarray(value) for name, value in input_example.items()}
    output = cls().load_bundle(bundle_dir).predict(None, example)
    info = mlflow.pyfunc.log_model(
        name=kind,
        python_model=cls(),
        artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
        signature=infer_signature(example, output),
        input_example=example,
        pip_requirements=_pip_requirements(),  # skips MLflow's slow requirement inference
        metadata={"kind": kind, "fingerprint": manifest.fingerprint(),
                  "bundle": dict(manifest.metadata)},
    )
    return info.model_uri


def logged_bundle(model_uri: str, expected_kind: str) -> dict:
    """The metadata log_bundle stored with a logged model; checks its kind."""
    metadata = mlflow.models.get_model_info(model_uri).metadata or {}
    if metadata.get("kind") != expected_kind:
        raise RegistryError(f"{model_uri} holds a {metadata.get('kind')!r} model, expected "
                            f"{expected_kind!r} (log it with log_bundle)")
    return metadata


def register_model_set(embedding_uri: str, ranker_uri: str, fallback_uri: str, *,
                       alias: str | None = CHALLENGER, tags: Mapping[str, str] | None = None,
                       names: ModelNames | None = None) -> ModelSet:
    """Register three logged models (URIs from log_bundle) as new versions of one set.

    Refuses (IncompatibleModelsError, nothing registered) when a ranker's bundle names a
    different embedding fingerprint. Ranker and fallback versions are tagged with the new
    embedding version and fingerprint; `alias` (if not None) is set on all three.
    """
    names = names or ModelNames()
    uris = {"embedding": embedding_uri, "ranker": ranker_uri, "fallback_ranker": fallback_uri}
    meta = {kind: logged_bundle(uri, kind) for kind, uri in uris.items()}
    embedding_fingerprint = meta["embedding"]["fingerprint"]
    for kind in ("ranker", "fallback_ranker"):
        trained_on = meta[kind]["bundle"].get("embedding_fingerprint")
        if trained_on != embedding_fingerprint:
            raise IncompatibleModelsError(
                f"{kind} {uris[kind]} was trained against embedding {trained_on!r}, "
                f"not {embedding_fingerprint!r} ({embedding_uri})")
    existing = registered_set(names, {kind: meta[kind]["fingerprint"] for kind in uris})
    if existing is not None:
        LOG.info("the models are registered already, bit for bit, as %s: no new versions",
                 {kind: version for kind, _, version in existing.items()})
        if alias:
            set_alias(existing, alias)
        return existing
    extra = {key: str(value) for key, value in (tags or {}).items()}
    versions: dict[str, str] = {}
    for kind, name in names.by_kind().items():
        version_tags = {**extra, TAG_KIND: kind, TAG_FINGERPRINT: meta[kind]["fingerprint"]}
        if kind != "embedding":
            version_tags[TAG_EMBEDDING_VERSION] = versions["embedding"]
            version_tags[TAG_EMBEDDING_FINGERPRINT] = embedding_fingerprint
        registered = mlflow.register_model(uris[kind], name, tags=version_tags)
        versions[kind] = str(registered.version)
    model_set = ModelSet(versions["embedding"], versions["ranker"], versions["fallback_ranker"],
                         names)
    if alias:
        set_alias(model_set, alias)
    return model_set


def set_alias(model_set: ModelSet, alias: str) -> None:
    client = mlflow.MlflowClient()
    for _, name, version_ in model_set.items():
        client.set_registered_model_alias(name, alias, version_)


def registered_set(names: ModelNames, fingerprints: Mapping[str, str]) -> ModelSet | None:
    """The newest registered versions holding exactly these bundles (kind -> fingerprint), with
    both rankers paired with that embedding version; None when there are none."""
    client = mlflow.MlflowClient()

    def versions(kind: str) -> list[Any]:
        name = names.by_kind()[kind]
        found = client.search_model_versions(
            f"name = '{name}' and tags.{TAG_FINGERPRINT} = '{fingerprints[kind]}'")
        return sorted(found, key=lambda v: int(v.version), reverse=True)

    for embedding in versions("embedding"):
        paired = {kind: [v for v in versions(kind)
                         if v.tags.get(TAG_EMBEDDING_VERSION) == str(embedding.version)]
                  for kind in ("ranker", "fallback_ranker")}
        if paired["ranker"] and paired["fallback_ranker"]:
            return ModelSet(str(embedding.version), str(paired["ranker"][0].version),
                            str(paired["fallback_ranker"][0].version), names, new=False)
    return None
