"""The two-tower settings search (training/tuning.py) on tiny synthetic data, into a real MLflow
sqlite store: every trial a nested run, the best one reported."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import optuna
import pytest

from registry import configure_tracking
from training.config import TwoTowerConfig
from training.data import SyntheticConfig, generate_synthetic
from training.steps import prepare_data
from training.tuning import default_params, suggest, tune

BASE = TwoTowerConfig(dim=16, hidden=32, history_len=8)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_each_encoder_draws_from_its_own_ranges() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {}
    for _ in range(12):
        trial = study.ask()
        config = suggest(trial, BASE, epochs=3)
        seen[config.user_encoder] = config
        study.tell(trial, 0.0)
        assert config.epochs == 3 and config.seed == BASE.seed
        assert config.dim in (32, 64, 128) and 3e-4 <= config.learning_rate <= 1e-2
    assert seen["sequence"].batch_size in (16, 32, 64) and seen["sequence"].history_len == 50
    assert seen["pooled"].batch_size in (256, 512, 1024)
    assert seen["pooled"].history_len in (10, 20, 50)


def test_a_trial_scores_the_mean_over_training_seeds_trained_in_parallel(tmp_path: Path) -> None:
    data = prepare_data(generate_synthetic(SyntheticConfig(n_users=120, n_items=200)), BASE)
    configure_tracking(None, store_dir=tmp_path / "store")
    study = tune(data, BASE, trials=1, out=tmp_path / "tuning", epochs=1, seeds=[0, 1], jobs=2,
                 encoders=["sequence"])
    [trial] = study.trials
    assert trial.params == default_params(BASE, "sequence")  # the defaults are the first trial
    [run] = mlflow.search_runs(experiment_names=["recsys"], output_format="list",
                               filter_string="tags.mlflow.runName = 'trial 0'")
    per_seed = [run.data.metrics[f"val_ndcg_at_10_seed{s}"] for s in (0, 1)]
    assert run.data.params["training_seeds"] == "0,1"
    assert per_seed[0] != per_seed[1]  # two seeds, two models
    assert trial.value == pytest.approx(sum(per_seed) / 2)
    assert run.data.metrics["val_ndcg_at_10"] == pytest.approx(trial.value)


def test_a_study_logs_every_trial_as_a_nested_run_and_reports_the_best(tmp_path: Path) -> None:
    data = prepare_data(generate_synthetic(SyntheticConfig(n_users=120, n_items=200)), BASE)
    uri = configure_tracking(None, store_dir=tmp_path / "store")
    study = tune(data, BASE, trials=3, out=tmp_path / "tuning", epochs=1)
    values = [t.value for t in study.trials]
    assert len(values) == 3 and study.best_value == max(values)
    best = json.loads((tmp_path / "tuning" / "best.json").read_text())
    assert best["value"] == study.best_value and best["params"] == study.best_params
    assert (tmp_path / "tuning" / "history.png").stat().st_size > 0
    client = mlflow.MlflowClient(tracking_uri=uri)
    [parent] = mlflow.search_runs(experiment_names=["recsys"], output_format="list",
                                  filter_string="tags.mlflow.runName = 'tuning'")
    children = mlflow.search_runs(experiment_names=["recsys"], output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.metrics["val_ndcg_at_10"] for r in children) == sorted(values)
    assert parent.data.metrics["best_val_ndcg_at_10"] == pytest.approx(study.best_value)
    assert {"trials.csv", "best.json", "history.png"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)}
