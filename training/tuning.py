"""The search over the two-tower's settings: `python -m training tune` runs an Optuna study (TPE,
seeded) whose every trial trains the retrieval model with sampled settings and scores it by
validation NDCG@10 only, each trial an MLflow run nested under one `tuning` run.

The user encoder is one of the choices, and each encoder has its own ranges: batch and history
(pooled) or batch and dropout (sequence), as the two train on differently shaped examples, and a
temperature and item-id dropout for the pooled one only (the sequence encoder scores an
unnormalised dot product over the whole catalogue). The study writes
OUT/trials.csv, OUT/best.json and OUT/history.png and logs them to the parent run. The README
(Offline evaluation) says what the latest study chose and how the defaults in training/config.py
stand against it.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import mlflow
import optuna
from matplotlib.figure import Figure

from training import plots
from training.config import SEQUENCE_TOWER, TwoTowerConfig, flatten
from training.steps import PreparedData, fit_embedding
from training.threads import torch_threads
from training.two_tower import USER_ENCODERS

log = logging.getLogger(__name__)


CHOICES: dict[str, list[int]] = {"dim": [32, 64, 128], "pooled_batch_size": [256, 512, 1024],
                                 "pooled_history_len": [10, 20, 50],
                                 "sequence_batch_size": [16, 32, 64]}
RANGES = {"learning_rate": (3e-4, 1e-2), "temperature": (0.02, 0.2),
          "item_id_dropout": (0.0, 0.3), "sequence_dropout": (0.1, 0.6)}
LOG_SCALE = ("learning_rate", "temperature")
# Per encoder, the study's parameter → the TwoTowerConfig field it sets, in the order drawn. The
# pooled encoder scores a cosine similarity over a sampled softmax: a temperature to set.
FIELDS = {
    "pooled": {"dim": "dim", "learning_rate": "learning_rate", "temperature": "temperature",
               "item_id_dropout": "item_id_dropout", "pooled_batch_size": "batch_size",
               "pooled_history_len": "history_len"},
    "sequence": {"dim": "dim", "learning_rate": "learning_rate",
                 "sequence_batch_size": "batch_size", "sequence_dropout": "dropout"},
}


def suggest(trial: optuna.Trial, base: TwoTowerConfig, epochs: int | None = None,
            encoders: Sequence[str] = USER_ENCODERS) -> TwoTowerConfig:
    """A two-tower configuration drawn for `trial`: the pooled encoder's from `base`, the sequence
    encoder's from SEQUENCE_TOWER (with base's seed and threads); `epochs` caps either; only
    `encoders` are drawn from."""
    encoder = trial.suggest_categorical("user_encoder", list(encoders))
    # a trial trains one model: the settings drawn are each ensemble member's
    start = base if encoder == "pooled" else replace(SEQUENCE_TOWER, seed=base.seed,
                                                      threads=base.threads, members=1)
    start = replace(start, epochs=epochs or start.epochs)
    def draw(name: str) -> int | float:
        if name in CHOICES:
            return int(trial.suggest_categorical(name, CHOICES[name]))
        return trial.suggest_float(name, *RANGES[name], log=name in LOG_SCALE)

    return replace(start, **{field: draw(name) for name, field in FIELDS[encoder].items()})


def in_space(params: dict[str, Any]) -> bool:
    """Whether the study could draw `params` (a configuration outside it cannot be a trial)."""
    return all(params[k] in v for k, v in CHOICES.items() if k in params) and all(
        lo <= params[k] <= hi for k, (lo, hi) in RANGES.items() if k in params)


def default_params(base: TwoTowerConfig, encoder: str) -> dict[str, Any]:
    """The study's parameters of the configuration training uses by default for `encoder`
    (`base` for the pooled one, SEQUENCE_TOWER for the sequence one)."""
    config = base if encoder == "pooled" else SEQUENCE_TOWER
    return {"user_encoder": encoder,
            **{name: getattr(config, field) for name, field in FIELDS[encoder].items()}}


_SHARED: dict[str, PreparedData] = {}  # the data, inherited by forked trial workers


def _validation_ndcg(config: TwoTowerConfig) -> float:
    with torch_threads(config.threads):
        return fit_embedding(_SHARED["data"], config)[2]


def tune(data: PreparedData, base: TwoTowerConfig, trials: int, out: Path, seed: int = 0,
         epochs: int | None = None, seeds: Sequence[int] | None = None, jobs: int = 1,
         encoders: Sequence[str] = USER_ENCODERS) -> optuna.Study:
    """Run `trials` trials in a `tuning` MLflow run (one nested run each); write the report.

    Each trial trains once per training seed in `seeds` (default: base's) and scores the mean
    validation NDCG@10, so that the search follows the settings rather than one seed's noise;
    `jobs` seeds train at once, in forked processes (one torch thread each by default).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", study_name="two-tower",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    seeds = list(seeds) if seeds else [base.seed]
    for encoder in encoders:  # the defaults are trials too: a pick must beat them
        if in_space(defaults := default_params(base, encoder)):
            study.enqueue_trial(defaults)
    _SHARED["data"] = data
    context = multiprocessing.get_context("fork")

    def objective(trial: optuna.Trial) -> float:
        config = suggest(trial, base, epochs, encoders)
        with mlflow.start_run(run_name=f"trial {trial.number}", nested=True):
            mlflow.log_params({**flatten(config, "two_tower."),
                               "training_seeds": ",".join(map(str, seeds))})
            configs = [replace(config, seed=s) for s in seeds]
            if jobs > 1 and len(seeds) > 1:
                with ProcessPoolExecutor(min(jobs, len(seeds)), mp_context=context) as pool:
                    scores = list(pool.map(_validation_ndcg, configs))
            else:
                scores = [_validation_ndcg(c) for c in configs]
            ndcg = float(sum(scores) / len(scores))
            mlflow.log_metrics({"val_ndcg_at_10": ndcg,
                                **{f"val_ndcg_at_10_seed{s}": v for s, v in zip(seeds, scores)}})
        log.info("trial %d: validation NDCG@10 %.4f (seeds %s: %s) with %s", trial.number, ndcg,
                 seeds, [round(v, 4) for v in scores], trial.params)
        return ndcg

    with mlflow.start_run(run_name="tuning", nested=mlflow.active_run() is not None):
        mlflow.set_tags({"dataset": data.dataset.name, "data_fingerprint": data.fingerprint})
        study.optimize(objective, n_trials=trials)
        out.mkdir(parents=True, exist_ok=True)
        study.trials_dataframe().to_csv(out / "trials.csv", index=False)
        best = {"value": study.best_value, "params": study.best_params,
                "trial": study.best_trial.number, "trials": len(study.trials)}
        (out / "best.json").write_text(json.dumps(best, indent=2))
        fig = plot_history(study)
        fig.savefig(out / "history.png", dpi=110)
        plots.close(fig)
        for name in ("trials.csv", "best.json", "history.png"):
            mlflow.log_artifact(str(out / name))
        mlflow.log_params({f"best.{k}": v for k, v in study.best_params.items()})
        mlflow.log_metric("best_val_ndcg_at_10", study.best_value)
    return study


def plot_history(study: optuna.Study) -> Figure:
    """Validation NDCG@10 per trial by user encoder, and the best so far."""
    fig, ax = plt.subplots(figsize=(7, 4))
    done = [t for t in study.trials if t.value is not None]
    for encoder in ("pooled", "sequence"):
        mine = [t for t in done if t.params.get("user_encoder") == encoder]
        ax.scatter([t.number for t in mine], [t.value for t in mine], label=encoder)
    best, running = [], float("-inf")
    for t in done:
        running = max(running, float(t.value or running))
        best.append(running)
    ax.plot([t.number for t in done], best, color="black", label="best so far")
    ax.set(xlabel="trial", ylabel="validation NDCG@10", title="two-tower settings search")
    ax.legend()
    fig.tight_layout()
    return fig
