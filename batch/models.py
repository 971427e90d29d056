"""Which models the job scores with: the served tags of a models file, their bundles found in the
BentoML model store (as the service finds them) or in a training workdir."""
from __future__ import annotations

from pathlib import Path

from recsys.app.models_file import KINDS, ModelRefs, read_models_file
from recsys.errors import ArtifactError
from recsys.models import artifacts


def from_models_file(models_file: Path, alias: str) -> ModelRefs:
    """The alias's tags and their bundles in the BentoML model store (BENTOML_HOME)."""
    import bentoml  # the serving extra: only this way of finding bundles needs it

    tags = _tags(models_file, alias)
    return ModelRefs(alias, {kind: Path(bentoml.models.get(tag).path)
                             for kind, tag in tags.items()}, tags)


def from_workdir(workdir: Path, models_file: Path | None, alias: str) -> ModelRefs:
    """Bundles in `workdir`/<kind> (training's layout, or a copy on shared storage). With a
    models file they are known by its tags, and each must be the bundle its tag names; without
    one, by their content fingerprints (which no service serves: Parquet output only)."""
    paths = {kind: workdir / kind for kind in KINDS}
    fingerprints = {kind: artifacts.read_manifest(path, kind).fingerprint()
                    for kind, path in paths.items()}
    if models_file is None:
        return ModelRefs(alias, paths, {k: f"{k}:{fp}" for k, fp in fingerprints.items()})
    tags = _tags(models_file, alias)
    for kind, tag in tags.items():
        # a served tag ends with the first 8 hex of its bundle's fingerprint (model_tag)
        if not tag.endswith(f"-{fingerprints[kind][:8]}"):
            raise ArtifactError(f"{paths[kind]} (fingerprint {fingerprints[kind][:8]}) is not "
                                f"the bundle of {tag} in {models_file}")
    return ModelRefs(alias, paths, tags)


def _tags(models_file: Path, alias: str) -> dict[str, str]:
    tags = read_models_file(models_file)
    if alias not in tags:
        raise ArtifactError(f"{models_file} names no {alias!r} (aliases: {sorted(tags)})")
    return {kind: str(tags[alias][kind]) for kind in KINDS}
