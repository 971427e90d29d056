"""Which bundles the job scores with, and under which versions (no Ray needed)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from batch.models import from_workdir
from recsys.errors import ArtifactError
from recsys.models import artifacts
from tests.support.fixtures_models import TrainedModels


def test_a_workdir_is_known_by_the_models_files_tags(trained_models: TrainedModels) -> None:
    refs = from_workdir(trained_models.workdirs["champion"], trained_models.models_file,
                        "champion")
    assert refs == trained_models.refs("champion")


def test_a_workdir_that_is_not_the_tags_bundles_is_refused(trained_models: TrainedModels) -> None:
    with pytest.raises(ArtifactError, match="is not the bundle of recsys-embedding"):
        from_workdir(trained_models.workdirs["challenger"], trained_models.models_file,
                     "champion")


def test_without_a_models_file_a_workdir_is_known_by_its_fingerprints(
        trained_models: TrainedModels) -> None:
    workdir = trained_models.workdirs["champion"]
    refs = from_workdir(workdir, None, "champion")
    fingerprint = artifacts.read_manifest(workdir / "ranker").fingerprint()
    assert refs.versions["ranker"] == f"ranker:{fingerprint}"


def test_an_alias_the_models_file_lacks_is_named(tmp_path: Path,
                                                 trained_models: TrainedModels) -> None:
    models_file = tmp_path / "models.json"
    champion = json.loads(trained_models.models_file.read_text())["champion"]
    models_file.write_text(json.dumps({"champion": champion}))
    with pytest.raises(ArtifactError, match="names no 'challenger'"):
        from_workdir(trained_models.workdirs["champion"], models_file, "challenger")
