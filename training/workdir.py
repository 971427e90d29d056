"""Hand-off between notebooks run in separate kernels: steps.json plus the bundles beside it."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from recsys.errors import ArtifactError
from recsys.models import artifacts
from recsys.models.bundles import EmbeddingBundle, check_compatible
from registry import Registry
from training.settings import TrainingSettings
from training.steps import PreparedData, Rankers

STEPS_FILE = "steps.json"
# Step name -> the notebook that records it, in the order the notebooks run.
NOTEBOOKS = {
    "embedding": "01_train_embedding.ipynb",
    "ranker": "02_train_ranker.ipynb",
    "evaluation": "03_evaluate.ipynb",
    "registration": "04_register_and_promote.ipynb",
}
# Bundle directory under the workdir (as training/pipeline.py lays it out) -> step writing it.
BUNDLES = {"embedding": "embedding", "ranker": "ranker", "fallback_ranker": "ranker"}


class WorkdirError(ArtifactError):
    """A notebook needs state that an earlier notebook writes; the message names both."""


def _missing(what: Path | str, step: str, workdir: Path) -> WorkdirError:
    notebook = NOTEBOOKS.get(step, f"the notebook that records step {step!r}")
    return WorkdirError(f"{what} is missing: run notebooks/{notebook} first "
                        f"with workdir={str(workdir)!r}")


def _read_steps(workdir: Path) -> dict[str, dict[str, Any]]:
    path = workdir / STEPS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def save_step(workdir: Path | str, step: str, **values: Any) -> Path:
    """Record `values` (JSON-serialisable: model URIs, run ids, settings) as `step`.

    Steps recorded after `step` are dropped: they were built on the state this one replaces.
    Returns the path of steps.json.
    """
    if step not in NOTEBOOKS:
        raise ValueError(f"step={step!r}; expected one of {', '.join(NOTEBOOKS)}")
    workdir = Path(workdir)
    order = list(NOTEBOOKS)
    earlier = set(order[:order.index(step)])
    steps = {name: state for name, state in _read_steps(workdir).items() if name in earlier}
    steps[step] = values
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = workdir / f".{STEPS_FILE}.tmp"
    tmp.write_text(json.dumps(steps, indent=2, default=str))
    os.replace(tmp, workdir / STEPS_FILE)  # a kernel reading meanwhile never sees half a file
    return workdir / STEPS_FILE


def load_step(workdir: Path | str, step: str) -> dict[str, Any]:
    """The values `save_step` recorded for `step`; WorkdirError names the notebook to run."""
    workdir = Path(workdir)
    if not (workdir / STEPS_FILE).is_file():
        raise _missing(workdir / STEPS_FILE, step, workdir)
    steps = _read_steps(workdir)
    if step not in steps:
        raise _missing(f"step {step!r} in {workdir / STEPS_FILE}", step, workdir)
    return steps[step]


def settings_from(**parameters: Any) -> TrainingSettings:
    """Settings from notebook parameters; None leaves a field to RECSYS_* env vars or defaults.

    Paths are made absolute, so later notebooks (any working directory) find the same places.
    """
    given = {name: value for name, value in parameters.items() if value is not None}
    settings = TrainingSettings(**given)
    paths = {name: getattr(settings, name).resolve()
             for name in ("data_path", "store_dir", "workdir")
             if getattr(settings, name) is not None}
    return settings.model_copy(update=paths)


def saved_settings(workdir: Path | str, **overrides: Any) -> TrainingSettings:
    """The settings the embedding notebook ran with, with non-None `overrides` applied."""
    saved = load_step(workdir, "embedding")["settings"]
    given = {name: value for name, value in overrides.items() if value is not None}
    return TrainingSettings(**{**saved, "workdir": Path(workdir).resolve(), **given})


def _bundle_dir(workdir: Path, name: str) -> Path:
    directory = workdir / name
    if not (directory / artifacts.MANIFEST).is_file():
        raise _missing(directory / artifacts.MANIFEST, BUNDLES[name], workdir)
    return directory


def load_embedding(workdir: Path | str, data: PreparedData | None = None) -> EmbeddingBundle:
    """`<workdir>/embedding`; with `data`, WorkdirError unless it was trained on that data."""
    workdir = Path(workdir)
    embedding = EmbeddingBundle.load(_bundle_dir(workdir, "embedding"))
    trained_on = embedding.manifest.metadata.get("data_fingerprint")
    if data is not None and trained_on != data.fingerprint:
        raise WorkdirError(f"{embedding.path} was trained on data {trained_on!r}, but the data "
                           f"loaded now is {data.fingerprint!r}: rerun notebooks/"
                           f"{NOTEBOOKS['embedding']} on this data")
    return embedding


def load_bundles(workdir: Path | str,
                 data: PreparedData | None = None) -> tuple[EmbeddingBundle, Rankers]:
    """The embedding bundle and both rankers from `workdir`, checked to belong together."""
    workdir = Path(workdir)
    embedding = load_embedding(workdir, data)
    rankers = Rankers.load(_bundle_dir(workdir, "ranker"), _bundle_dir(workdir, "fallback_ranker"))
    check_compatible(embedding, rankers.ranker)  # IncompatibleModelsError after a lone rerun of 01
    check_compatible(embedding, rankers.fallback)
    return embedding, rankers


def metric_histories(run_id: str, prefix: str = "") -> dict[str, list[float]]:
    """Per-step series of a run's metrics whose name starts with `prefix`, ordered by step."""
    client = mlflow.MlflowClient()
    names = sorted(name for name in client.get_run(run_id).data.metrics if name.startswith(prefix))
    return {name: [m.value for m in sorted(client.get_metric_history(run_id, name),
                                           key=lambda m: m.step)]
            for name in names}


def child_runs(run_id: str) -> dict[str, str]:
    """{run name: run id} of the runs nested under `run_id` (e.g. one per user encoder)."""
    runs = mlflow.search_runs(experiment_ids=[mlflow.get_run(run_id).info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
                              output_format="list")
    return {run.info.run_name: run.info.run_id for run in runs}


def versions_table(registry: Registry) -> pd.DataFrame:
    """One row per registered version of the three models (newest first), with its aliases."""
    rows = [{"model": info.name, "version": info.version, "aliases": ", ".join(info.aliases),
             "created": info.created, "run_id": info.run_id,
             "fingerprint": info.tags.get("fingerprint", "")}
            for name in registry.names.by_kind().values()
            for info in registry.list_versions(name)]
    return pd.DataFrame(rows)
