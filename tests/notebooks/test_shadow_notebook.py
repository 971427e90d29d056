"""Notebook 05 on a real shadow log and registry: what it logged, and promotion iff the verdict."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import mlflow
import pytest

from recsys.experiments.shadow_sinks import read_shadow_log
from registry import CHALLENGER, CHAMPION, Registry
from tests.notebooks.test_notebooks import NOTEBOOK_DIR, venv_kernel  # noqa: F401 (the fixture, used by name)
from tests.support.fixtures_models import TrainedModels
from tests.training.test_shadow_report import write_shadow_log
from training.shadow_report import shadow_frame, summarize

NOTEBOOK = "05_shadow_comparison.ipynb"
REQUESTS = 60
NEVER = {"min_records": 10**6}  # more records than the log holds: the verdict must be "keep"
ALWAYS = {"min_hr10_gain": -1.0, "max_p95_latency_ratio": 1e6, "max_error_rate": 1.0,
          "min_records": 1, "max_p_value": 1.0}


@pytest.fixture(scope="module")
def shadow_log(trained_models: TrainedModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("shadow") / "shadow.jsonl"
    counts = write_shadow_log(trained_models, path, REQUESTS)
    assert counts["written"] == REQUESTS
    return path


def _private_store(models: TrainedModels, tmp_path: Path) -> str:
    """A copy of the fixture's MLflow database, so that promoting here moves no alias that other
    tests read; artifacts stay where the fixture logged them (downloads only read them)."""
    database = models.tracking_uri.removeprefix("sqlite:///")
    shutil.copy(database, tmp_path / "mlruns.db")
    return f"sqlite:///{tmp_path / 'mlruns.db'}"


@pytest.mark.slow
@pytest.mark.usefixtures("venv_kernel")  # a `python3` kernelspec running this interpreter
@pytest.mark.parametrize(("rules", "expected"), [(NEVER, False), (ALWAYS, True)],
                         ids=["rules-block", "rules-pass"])
def test_notebook_logs_the_comparison_and_promotes_iff_the_verdict_says_so(
        trained_models: TrainedModels, shadow_log: Path, tmp_path: Path,
        rules: dict[str, float], expected: bool) -> None:
    import papermill

    uri = _private_store(trained_models, tmp_path)
    registry = Registry(uri)
    before = {alias: registry.resolve(alias) for alias in (CHAMPION, CHALLENGER)}
    assert before[CHAMPION] != before[CHALLENGER]
    papermill.execute_notebook(
        NOTEBOOK_DIR / NOTEBOOK, tmp_path / NOTEBOOK, kernel_name="python3",
        cwd=str(tmp_path), progress_bar=False,
        parameters={"shadow_log": str(shadow_log), "tracking_uri": uri, "promote": True,
                    "download_dir": str(tmp_path / "bundles"), **rules})

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("recsys")
    runs = client.search_runs([experiment.experiment_id],
                              "attributes.run_name = 'shadow-comparison'")
    assert len(runs) == 1
    run = runs[0]
    metrics = run.data.metrics
    summary = summarize(shadow_frame(read_shadow_log(shadow_log)))
    assert metrics["n"] == REQUESTS
    for name, value in summary.items():
        if math.isfinite(value):
            assert metrics[name] == pytest.approx(value), name
    for alias in ("champion", "challenger"):
        assert 0.0 <= metrics[f"offline_{alias}_pipeline_hr_at_10"] <= 1.0

    recorded = json.loads(Path(client.download_artifacts(run.info.run_id, "verdict.json",
                                                         str(tmp_path))).read_text())
    assert recorded["promote"] is expected
    assert len(recorded["reasons"]) == 5
    assert 0.0 <= metrics["paired_p_value"] <= 1.0
    assert run.data.tags["verdict"] == ("promote" if expected else "keep")
    assert metrics["verdict_promote"] == float(expected)
    assert run.data.tags["promoted"] == str(expected).lower()

    champion_now = registry.resolve(CHAMPION)
    assert (champion_now != before[CHAMPION]) is recorded["promote"]
    if recorded["promote"]:
        assert champion_now == before[CHALLENGER]
        assert registry.resolve("previous_champion") == before[CHAMPION]
        assert not registry.alias_exists(CHALLENGER)
    else:
        assert registry.resolve(CHALLENGER) == before[CHALLENGER]
