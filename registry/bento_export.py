"""Copy an aliased model set from the MLflow registry into the BentoML model store."""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import bentoml
from bentoml.exceptions import NotFound

from recsys.errors import ArtifactError
from recsys.models import artifacts
from recsys.models.artifacts import Manifest
from recsys.models.registry_client import (
    CHAMPION,
    model_tag,
)
from registry.model_registry import Registry
from registry.registration import (
    ModelSet,
)


def bento_models_for_alias(registry: Registry, alias: str = CHAMPION) -> dict[str, str]:
    """kind -> BentoML tag of the versions `alias` points to (what export writes or reuses).

    Read from the registry only; nothing is exported. For build scripts and service settings.
    """
    model_set = registry.resolve(alias)
    return {kind: model_tag(name, version, registry.version_metadata(name, version)["fingerprint"])
            for kind, name, version in model_set.items()}


@contextmanager
def bentoml_home(home: Path) -> Iterator[None]:
    """Use the BentoML store under `home` for bentoml.models calls inside the block.

    BentoML reads BENTOML_HOME once, on the first use of its model store, and caches the store
    for the life of the process; this swaps the cached store through BentoML's own dependency
    container and restores it on exit. A fresh process can set BENTOML_HOME instead.
    """
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    models = home / "models"
    models.mkdir(parents=True, exist_ok=True)
    with BentoMLContainer.bentoml_home.patch(str(home)), \
            BentoMLContainer.model_store_dir.patch(str(models)), \
            BentoMLContainer.model_store.patch(ModelStore(str(models))):
        yield


def _existing(tag: str) -> bentoml.Model | None:
    try:
        return bentoml.models.get(tag)
    except NotFound:
        return None


def _reusable(kind: str, tag: str, manifest: Manifest) -> bool:
    """True when `tag` is already stored with this content (checksums re-verified); False when
    absent; ArtifactError when it holds other content or its files were altered."""
    existing = _existing(tag)
    if existing is None:
        return False
    stored = str(existing.info.metadata.get("fingerprint"))
    if stored != manifest.fingerprint():
        raise ArtifactError(
            f"BentoML model {tag} already exists with fingerprint {stored}, but the registry "
            f"version is {manifest.fingerprint()}; delete it (bentoml models delete {tag}) "
            f"if the store is stale")
    artifacts.read_manifest(Path(existing.path), expected_kind=kind, verify=True)
    return True


def _create(kind: str, name: str, version: str, bundle: Path, alias: str) -> str:
    manifest = artifacts.read_manifest(bundle, expected_kind=kind, verify=False)
    labels = {"mlflow_model": name, "mlflow_version": version, "alias": alias}
    with bentoml.models.create(model_tag(name, version, manifest.fingerprint()), labels=labels,
                               metadata=_metadata(kind, manifest)) as model:
        shutil.copytree(bundle, model.path, dirs_exist_ok=True)
        # Verify the copy itself; an error inside the block leaves nothing in the store.
        artifacts.read_manifest(Path(model.path), expected_kind=kind, verify=True)
    return str(model.tag)


def _metadata(kind: str, manifest: Manifest) -> dict[str, Any]:
    return {**manifest.metadata, "kind": kind, "fingerprint": manifest.fingerprint()}


def export_to_bentoml(registry: Registry, alias: str = CHAMPION, *,
                      home: Path | None = None) -> dict[str, str]:
    """Export the three models `alias` points to; returns kind -> BentoML tag.

    Tags are model_tag's `<registered name>:v<version>-<fingerprint>`. All three bundles are downloaded and verified, and
    the store checked for clashing tags, before anything is written. Re-exporting the same versions reuses the stored models
    (after re-verifying their checksums); a stored tag with other content is an ArtifactError.
    `home` selects a BentoML home for this call; by default BentoML's own (BENTOML_HOME or
    ~/bentoml). Labels record the MLflow model, version and the alias of the first export.
    """
    model_set: ModelSet = registry.resolve(alias)
    registry.check_compatible(model_set)
    with tempfile.TemporaryDirectory(prefix="recsys-export-") as tmp:
        # Download and verify all three, and check the store for clashes, before writing any.
        bundles = {kind: registry.download(name, version, Path(tmp) / kind)
                   for kind, name, version in model_set.items()}
        with bentoml_home(home) if home is not None else nullcontext():
            fingerprints = {kind: artifacts.read_manifest(bundles[kind], verify=False).fingerprint()
                            for kind in bundles}
            tags = {kind: model_tag(name, version, fingerprints[kind])
                    for kind, name, version in model_set.items()}
            reuse = {kind: _reusable(kind, tags[kind],
                                    artifacts.read_manifest(bundles[kind], verify=False))
                     for kind in tags}
            for kind, name, version in model_set.items():
                if not reuse[kind]:
                    tags[kind] = _create(kind, name, version, bundles[kind], alias)
    return tags
