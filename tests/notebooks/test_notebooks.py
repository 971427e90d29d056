"""The notebooks run in order (papermill, tiny synthetic data), what they logged; the hand-off."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import mlflow
import nbformat
import pytest

from devtools.processes import REPO_ROOT
from recsys.errors import ArtifactError
from registry import CHALLENGER, CHAMPION, Registry
from training.workdir import (
    NOTEBOOKS,
    WorkdirError,
    load_bundles,
    load_embedding,
    load_step,
    save_step,
)

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
EPOCHS = 1
RANKER_EPOCHS = 1
MODELS = ("popularity", "als", "retrieval", "fallback", "pipeline")


# --- the committed notebooks -------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")))
def test_notebook_is_committed_clean(name: str) -> None:
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert notebook.metadata.kernelspec.name == "python3"
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert sum("parameters" in cell.metadata.get("tags", []) for cell in code) == 1


# --- the hand-off ------------------------------------------------------------------------
def test_load_step_names_the_notebook_to_run(tmp_path: Path) -> None:
    with pytest.raises(WorkdirError, match=r"steps\.json is missing: run notebooks/01_train"):
        load_step(tmp_path, "embedding")
    save_step(tmp_path, "embedding", run_id="a")
    with pytest.raises(WorkdirError, match=r"step 'ranker' .* run notebooks/02_train_ranker"):
        load_step(tmp_path, "ranker")


def test_saving_a_step_forgets_the_steps_built_on_it(tmp_path: Path) -> None:
    for step in ("embedding", "ranker", "evaluation"):
        save_step(tmp_path, step, run_id=step)
    save_step(tmp_path, "ranker", run_id="again")
    assert json.loads((tmp_path / "steps.json").read_text()) == {
        "embedding": {"run_id": "embedding"}, "ranker": {"run_id": "again"}}


def test_missing_bundles_name_the_file_and_notebook(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"embedding/manifest\.json is missing: run "
                                            r"notebooks/01_train_embedding"):
        load_embedding(tmp_path)
    with pytest.raises(WorkdirError, match="01_train_embedding"):
        load_bundles(tmp_path)


# --- the notebooks end to end ------------------------------------------------------------
@pytest.fixture
def venv_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A `python3` kernelspec that runs this interpreter, found before any other.

    A `python3` spec in ~/.local/share/jupyter or on the system may name another Python;
    JUPYTER_PATH comes first in the kernelspec search, so this one wins.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (test interpreter)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    for name in [name for name in os.environ if name.startswith("RECSYS_")]:
        monkeypatch.delenv(name)  # the kernels inherit the environment: no stray data path
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable
    return "python3"


def _run_notebooks(tmp_path: Path, kernel: str) -> Path:
    import papermill

    workdir = tmp_path / "work"
    (tmp_path / "executed").mkdir()
    parameters = {
        "01_train_embedding.ipynb": {
            "workdir": str(workdir), "store_dir": str(tmp_path / "store"), "epochs": EPOCHS,
            "synthetic_users": 150, "synthetic_items": 300, "seed": 0},
        "02_train_ranker.ipynb": {"workdir": str(workdir), "ranker_epochs": RANKER_EPOCHS},
        "03_evaluate.ipynb": {"workdir": str(workdir)},
        "04_register_and_promote.ipynb": {"workdir": str(workdir), "promote": "if-no-champion"},
    }
    for name in NOTEBOOKS.values():
        papermill.execute_notebook(
            NOTEBOOK_DIR / name, tmp_path / "executed" / name, parameters=parameters[name],
            kernel_name=kernel, cwd=str(tmp_path), progress_bar=False)
    return workdir


@pytest.mark.slow
def test_notebooks_run_in_order_and_log_to_mlflow(tmp_path: Path, venv_kernel: str) -> None:
    workdir = _run_notebooks(tmp_path, venv_kernel)
    steps = json.loads((workdir / "steps.json").read_text())
    assert list(steps) == list(NOTEBOOKS)
    uri = steps["embedding"]["tracking_uri"]
    assert uri == f"sqlite:///{(tmp_path / 'store' / 'mlruns.db').resolve()}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("recsys")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    encoders = {f"two-tower: {name} user encoder" for name in ("pooled", "sequence")}
    assert set(runs) == {"two-tower", "ranker", "evaluation"} | encoders
    for step, run_name in (("embedding", "two-tower"), ("ranker", "ranker"),
                           ("evaluation", "evaluation")):
        assert steps[step]["run_id"] == runs[run_name].info.run_id

    for name in encoders:  # each encoder trained its epochs in its run, under "two-tower"
        run = runs[name]
        assert run.data.tags["mlflow.parentRunId"] == runs["two-tower"].info.run_id
        for metric in ("two_tower_loss", "two_tower_val_hr_at_10"):
            assert len(client.get_metric_history(run.info.run_id, metric)) == EPOCHS
    assert runs["two-tower"].data.params["two_tower.chosen_user_encoder"] in ("pooled", "sequence")
    assert len(client.get_metric_history(runs["ranker"].info.run_id, "ranker_loss")) \
        == RANKER_EPOCHS

    metrics = runs["evaluation"].data.metrics
    for model in MODELS:
        assert 0.0 <= metrics[f"test_{model}_hr_at_10"] <= 1.0
        assert 0.0 <= metrics[f"test_{model}_ndcg_at_10"] <= 1.0
    assert metrics["pipeline_over_popularity_hr10"] == pytest.approx(
        metrics["test_pipeline_hr_at_10"] / max(metrics["test_popularity_hr_at_10"], 1e-12))
    for name in ("known_item_clean", "known_item_typo", "category_bm25", "category_personalised"):
        assert 0.0 <= metrics[f"search_{name}_mrr_at_10"] <= metrics[f"search_{name}_hr_at_10"] \
            <= 1.0, name  # the search section (notebook 03's table) was logged with the rest

    registry = Registry(uri)
    champion = registry.resolve(CHAMPION)
    assert champion == registry.resolve(CHALLENGER)
    assert steps["registration"] == {"promoted": True, "versions": {
        "embedding": champion.embedding, "ranker": champion.ranker,
        "fallback_ranker": champion.fallback}}
    embedding_version = registry.list_versions(registry.names.embedding)[0]
    assert embedding_version.run_id == runs["two-tower"].info.run_id
    assert embedding_version.tags["evaluation_run_id"] == runs["evaluation"].info.run_id
