"""Session fixture: tiny real models trained, registered (champion + challenger) and exported.

Everything lives under one temporary directory: the MLflow sqlite store, the bundles, a BentoML
home and the serving models file. Training is the real pipeline on a small synthetic dataset.
The challenger reads a shorter history than the champion (CHALLENGER_HISTORY_LEN), as a
challenger of another shape would: every test that serves both serves that case.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from recsys.app.models_file import ModelRefs

CHAMPION_HISTORY_LEN = 20  # the champion serves the sequence encoder, the challenger the pooled one
CHALLENGER_HISTORY_LEN = 8


@dataclass(frozen=True)
class TrainedModels:
    root: Path
    tracking_uri: str
    bentoml_home: Path
    models_file: Path  # {"champion": {kind: tag}, "challenger": {...}}
    workdirs: dict[str, Path]  # alias -> pipeline workdir holding the bundles

    def refs(self, alias: str = "champion") -> ModelRefs:
        tags = json.loads(self.models_file.read_text())[alias]
        work = self.workdirs[alias]
        return ModelRefs(alias, {"embedding": work / "embedding", "ranker": work / "ranker",
                                 "fallback_ranker": work / "fallback_ranker"}, tags)

    def env(self) -> dict[str, str]:
        """Environment for a `bentoml serve` of service.py over these models."""
        return {"BENTOML_HOME": str(self.bentoml_home), "RECSYS_MODELS_FILE": str(self.models_file),
                "BENTOML_DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
                "RECSYS_RANKING_POLICY": "rank_all"}  # as tests/support/runtime.py settings()


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainedModels]:
    from registry import Registry, bentoml_home, export_to_bentoml
    from training.config import SEQUENCE_TOWER, PipelineConfig, TwoTowerConfig
    from training.pipeline import run_pipeline
    from training.settings import TrainingSettings

    root = tmp_path_factory.mktemp("models")
    workdirs = {}
    # One user encoder each, so that each alias serves a known one: the champion the sequence
    # encoder, the challenger the pooled one with a shorter history.
    sequence = PipelineConfig(two_tower=replace(SEQUENCE_TOWER, history_len=CHAMPION_HISTORY_LEN),
                              sequence_tower=None)
    shorter = PipelineConfig(two_tower=TwoTowerConfig(history_len=CHALLENGER_HISTORY_LEN),
                             sequence_tower=None)
    for alias, seed, promote, config in (("champion", 0, "always", sequence),
                                         ("challenger", 1, "never", shorter)):
        settings = TrainingSettings(store_dir=root / "mlstore", workdir=root / f"work-{alias}",
                                    epochs=1, ranker_epochs=1, synthetic_users=150,
                                    synthetic_items=300, seed=seed)
        result = run_pipeline(settings, config, promote=promote)
        workdirs[alias] = settings.workdir
    registry = Registry(result.tracking_uri)
    home = root / "bentoml"
    tags = {}
    with bentoml_home(home):
        for alias in ("champion", "challenger"):
            tags[alias] = export_to_bentoml(registry, alias)
    models_file = root / "serving-models.json"
    models_file.write_text(json.dumps(tags, indent=2))
    yield TrainedModels(root, result.tracking_uri, home, models_file, workdirs)
    os.environ.pop("RECSYS_MODELS_FILE", None)
