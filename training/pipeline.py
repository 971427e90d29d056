"""The headless pipeline: each step is one MLflow run; `run_pipeline` chains them and registers."""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from recsys.features import DENSE_FEATURES
from recsys.models import artifacts
from recsys.models.bundles import EmbeddingBundle
from registry import (
    CHAMPION,
    AlreadyChampion,
    ModelSet,
    Registry,
    configure_tracking,
    log_bundle,
    register_model_set,
)
from training import plots
from training.cold_start import cold_start_curve, plot_cold_start
from training.config import PipelineConfig, TwoTowerConfig, flatten
from training.data import Dataset, SyntheticConfig, load_dataset
from training.evaluate import format_table, metrics_by_group, paired_gain, tied_to_history
from training.replay import replay_cut
from training.search_ranker import train_search_ranker
from training.search_step import evaluate_search_step
from training.settings import TrainingSettings
from training.steps import (
    PreparedData,
    Rankers,
    model_ranks,
    padded_histories,
    prepare_data,
    retrieval_diagnostics,
    train_embedding,
    train_rankers,
)

log = logging.getLogger(__name__)
TABLE_COLUMNS = ("hr@10", "ndcg@10", "recall@50")


def code_version() -> str:
    """git commit of the working tree (with '-dirty' when modified), else 'unknown'."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty.strip() else sha


@dataclass
class Timings:
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 1)
            log.info("%s took %.1f s", name, self.seconds[name])


def load_dataset_of(settings: TrainingSettings) -> Dataset:
    """The dataset the settings name (RECSYS_DATA_PATH, else the synthetic one of its seed),
    whole: the replay holdout included."""
    synthetic = None if settings.data_path else SyntheticConfig(
        n_users=settings.synthetic_users, n_items=settings.synthetic_items,
        seed=settings.synthetic_seed)
    return load_dataset(settings.data_path, synthetic=synthetic)


def load_prepared(settings: TrainingSettings, config: PipelineConfig) -> PreparedData:
    """The data models train on: the dataset less its replay holdout, split and encoded."""
    dataset = load_dataset_of(settings)
    if settings.replay_holdout:
        training, _ = replay_cut(dataset.interactions, settings.replay_holdout)
        dataset = replace(dataset, interactions=training)
    return prepare_data(dataset, config.two_tower)


def apply_overrides(config: PipelineConfig, settings: TrainingSettings) -> PipelineConfig:
    def tower(c: TwoTowerConfig) -> TwoTowerConfig:
        return replace(c, seed=settings.seed, epochs=settings.epochs or c.epochs,
                       threads=settings.torch_threads or c.threads)
    ranker = replace(config.ranker, seed=settings.seed,
                     epochs=settings.ranker_epochs or config.ranker.epochs,
                     threads=settings.torch_threads or config.ranker.threads)
    sequence = tower(config.sequence_tower) if config.sequence_tower else None
    return replace(config, two_tower=tower(config.two_tower), sequence_tower=sequence,
                   ranker=ranker)


class _EpochLog:
    """Collects per-epoch metrics (for plots) while logging them to the active MLflow run."""

    def __init__(self) -> None:
        self.series: dict[str, list[float]] = defaultdict(list)

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        mlflow.log_metrics(metrics, step=step)
        for name, value in metrics.items():
            self.series[name].append(value)


def _provenance(data: PreparedData) -> dict[str, str]:
    return {"data_fingerprint": data.fingerprint, "dataset": data.dataset.name,
            "code_version": code_version()}


def embedding_step(data: PreparedData, config: PipelineConfig, workdir: Path) -> tuple[EmbeddingBundle, str]:
    """Train each user encoder of `config` in a nested MLflow run and keep the one with the best
    validation NDCG@10 (its bundle in workdir/embedding); returns it and its model URI."""
    with mlflow.start_run(run_name="two-tower", nested=mlflow.active_run() is not None):
        mlflow.set_tags(_provenance(data))
        mlflow.log_dict(data.summary(), "data_summary.json")
        mlflow.log_dict(dict(data.dataset.repairs), "data_repairs.json")
        towers = {tower.user_encoder: tower for tower in config.user_encoders()}
        tried = {name: _train_encoder(data, tower, workdir) for name, tower in towers.items()}
        chosen = max(tried, key=lambda name: tried[name][1])
        mlflow.log_params({**flatten(towers[chosen], "two_tower."),
                           "two_tower.chosen_user_encoder": chosen})
        mlflow.log_metrics({f"val_ndcg_at_10_{name}": score for name, (_, score) in tried.items()})
        log.info("user encoder: %s (validation NDCG@10 %s)", chosen,
                 {name: round(score, 4) for name, (_, score) in tried.items()})
        target = workdir / "embedding"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(tried[chosen][0].path, target)
        embedding = with_search_ranker(data, EmbeddingBundle.load(target))
        history = padded_histories(data.validation, embedding.history_len)[:3]
        example = {"history": history, "attributes": data.eval_attributes(data.validation)[:3]}
        uri = log_bundle(embedding.path, "embedding", example)
    return embedding, uri


def with_search_ranker(data: PreparedData, embedding: EmbeddingBundle) -> EmbeddingBundle:
    """The bundle with its search ranker (training/search_ranker.py) and the choice between it
    and fusion alone in its manifest; logged to the active run."""
    chosen = train_search_ranker(data, embedding, embedding.path)
    artifacts.write_manifest(embedding.path, "embedding",
                             {**embedding.manifest.metadata, "search_ranking": chosen})
    mlflow.log_dict(chosen, "search_ranking.json")
    for ranking in ("fusion", "learned"):
        for kind, value in chosen.get("validation", {}).get(ranking, {}).items():
            mlflow.log_metric(f"search_val_{ranking}_{kind}_hr_at_10", value)
    return EmbeddingBundle.load(embedding.path)


def _train_encoder(data: PreparedData, tower: TwoTowerConfig,
                   workdir: Path) -> tuple[EmbeddingBundle, float]:
    """One user encoder in its own nested run: its bundle and its best validation NDCG@10."""
    with mlflow.start_run(run_name=f"two-tower: {tower.user_encoder} user encoder", nested=True):
        mlflow.log_params(flatten(tower, "two_tower."))
        epochs = _EpochLog()
        embedding = train_embedding(data, tower, workdir / f"embedding-{tower.user_encoder}",
                                    log=epochs)
        fig = plots.training_curves(dict(epochs.series), f"two-tower ({tower.user_encoder})")
        mlflow.log_figure(fig, "two_tower_curves.png")
        plots.close(fig)
    return embedding, epochs.series["two_tower_model_val_ndcg_at_10"][-1]


def ranker_step(data: PreparedData, embedding: EmbeddingBundle, config: PipelineConfig,
                workdir: Path) -> tuple[Rankers, str, str]:
    """Train the ranker and the fallback in an MLflow run; returns them and their model URIs."""
    with mlflow.start_run(run_name="ranker", nested=mlflow.active_run() is not None):
        mlflow.log_params({**flatten(config.ranker, "ranker."),
                           **flatten(config.fallback, "fallback.")})
        mlflow.set_tags({**_provenance(data), "embedding_fingerprint": embedding.fingerprint})
        epochs = _EpochLog()
        rankers = train_rankers(data, embedding, config.ranker, config.fallback,
                                workdir / "ranker", workdir / "fallback_ranker",
                                config.evaluation, log=epochs)
        n_features = len(rankers.ranker.scaler.mean) + 2 * embedding.item_vectors.shape[1]
        example = {"features": np.zeros((4, n_features), dtype=np.float32)}
        ranker_uri = log_bundle(rankers.ranker.path, "ranker", example)
        fallback_uri = log_bundle(rankers.fallback.path, "fallback_ranker", example)
    return rankers, ranker_uri, fallback_uri


@dataclass(frozen=True)
class EvalReport:
    results: dict[str, dict[str, float]]
    diagnostics: dict[str, float]
    table: str
    # {"tied" | "untied": {model: metrics}}: the test users whose last two events share a
    # timestamp (their order is the split's tie rule), and the rest
    by_tie: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    # a new user's metrics with 0, 1, 3, 5, 10 events (training/cold_start.py)
    cold_start: pd.DataFrame = field(default_factory=pd.DataFrame)
    # {"pipeline_vs_retrieval": {"hr@10": {gain, low, high, significant}, "ndcg@10": ...}}: the
    # ranker's gain with a 95% paired bootstrap interval over test users
    significance: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    # search on the test split with the served settings (training/search_step.py): config,
    # chosen, test ({"known_item_clean/hr@10": {mean, ci95, n}, ...}), seconds; {} when skipped
    search: dict[str, Any] = field(default_factory=dict)
    search_table: str = ""  # markdown; "" when skipped

    def hr10_ratio(self, model: str = "pipeline", baseline: str = "popularity") -> float:
        return self.results[model]["hr@10"] / max(self.results[baseline]["hr@10"], 1e-12)


def evaluation_step(data: PreparedData, embedding: EmbeddingBundle, rankers: Rankers,
                    config: PipelineConfig, workdir: Path) -> EvalReport:
    """Offline evaluation on the test split, logged to the active run (or a new one)."""
    with mlflow.start_run(run_name="evaluation", nested=mlflow.active_run() is not None):
        ranks = model_ranks(data, embedding, rankers, config.evaluation)
        results = ranks.metrics(config.evaluation.cutoffs)
        tied = tied_to_history(data.test)
        by_tie = metrics_by_group(ranks.ranks, {"tied": tied, "untied": ~tied},
                                  config.evaluation.cutoffs)
        diagnostics = {**retrieval_diagnostics(data, embedding, config.evaluation),
                       "tied_user_share": float(tied.mean())}
        table = format_table(results, TABLE_COLUMNS)
        curve = cold_start_curve(data, embedding, rankers, config.evaluation)
        significance = {f"{name}_vs_retrieval": paired_gain(ranks.ranks[name],
                                                            ranks.ranks["retrieval"])
                        for name in ("pipeline", "als", "ease") if name in ranks.ranks}
        workdir.mkdir(parents=True, exist_ok=True)
        search = evaluate_search_step(data, embedding, config.evaluation.search_seeds, workdir)
        report = EvalReport(results, diagnostics, table, by_tie, curve, significance,
                            search.result if search else {}, search.table if search else "")
        for model, metrics in results.items():
            mlflow.log_metrics({f"test_{model}_{k.replace('@', '_at_')}": v
                                for k, v in metrics.items()})
        mlflow.log_metrics(diagnostics)
        mlflow.log_metric("pipeline_over_popularity_hr10", report.hr10_ratio())
        mlflow.log_metrics({f"{pair}_{metric.replace('@', '_at_')}_{k}": v
                            for pair, metrics in significance.items()
                            for metric, values in metrics.items() for k, v in values.items()})
        payload = {"results": results, "diagnostics": diagnostics, "by_tie": by_tie,
                   "significance": significance,
                   "embedding": {"user_encoder": embedding.config.get("user_encoder", "pooled"),
                                 "history_len": embedding.history_len},
                   "ranking_policy": rankers.ranker.policy.to_metadata(),
                   "cold_start": curve.to_dict(orient="records"), "data": data.summary(),
                   "search": report.search}
        text = table + (f"\n\n## Search\n\n{report.search_table}" if search else "\n")
        (workdir / "evaluation.json").write_text(json.dumps(payload, indent=2))
        (workdir / "evaluation.md").write_text(text)
        # each test user's rank per model: what a paired comparison of runs or seeds needs
        np.savez_compressed(workdir / "test_ranks.npz", user_ids=np.asarray(data.test.user_ids),
                            **ranks.ranks)
        mlflow.log_dict(payload, "evaluation.json")
        mlflow.log_text(text, "evaluation.md")
        fig = plots.metrics_bar(results)
        fig.savefig(workdir / "evaluation.png", dpi=110)
        mlflow.log_figure(fig, "evaluation.png")
        plots.close(fig)
        fig = plot_cold_start(curve)
        fig.savefig(workdir / "cold_start.png", dpi=110)
        mlflow.log_figure(fig, "cold_start.png")
        plots.close(fig)
    return report


@dataclass(frozen=True)
class PipelineResult:
    model_set: ModelSet
    promoted: bool
    report: EvalReport
    timings: dict[str, float]
    tracking_uri: str


def run_pipeline(settings: TrainingSettings, config: PipelineConfig | None = None,
                 promote: str = "if-no-champion") -> PipelineResult:
    """Data → two-tower → rankers → evaluation → register as challenger (→ champion).

    promote: "if-no-champion" (default), "always" or "never".
    """
    if promote not in ("if-no-champion", "always", "never"):
        raise ValueError(f"promote={promote!r}; expected 'if-no-champion', 'always' or 'never'")
    config = apply_overrides(config or PipelineConfig(), settings)
    uri = configure_tracking(settings.tracking_uri, store_dir=settings.store_dir)
    timings = Timings()
    with timings.step("data"):
        data = load_prepared(settings, config)
    log.info("data: %s", data.summary())
    with mlflow.start_run(run_name="pipeline"):
        mlflow.set_tags(_provenance(data))
        with timings.step("two_tower"):
            embedding, embedding_uri = embedding_step(data, config, settings.workdir)
        with timings.step("rankers"):
            rankers, ranker_uri, fallback_uri = ranker_step(data, embedding, config, settings.workdir)
        with timings.step("evaluation"):
            report = evaluation_step(data, embedding, rankers, config, settings.workdir)
        with timings.step("registration"):
            model_set = register_model_set(embedding_uri, ranker_uri, fallback_uri,
                                           tags=_provenance(data))
            registry = Registry(uri)
            promoted = promote == "always" or (promote == "if-no-champion"
                                               and not registry.champion_exists())
            if promoted:
                try:
                    registry.promote_versions(model_set)
                except AlreadyChampion as no_op:
                    log.info("%s", no_op)
                    promoted = False
        mlflow.log_dict(timings.seconds, "timings.json")
    return PipelineResult(model_set, promoted, report, dict(timings.seconds), uri)


def ensure_champion(settings: TrainingSettings, config: PipelineConfig | None = None) -> str:
    """The main command's step: serve a champion trained on the data `settings` name. Keeps the
    champion when it was trained on this data; else promotes the newest set registered for
    this data before (switching back costs no training); else trains one and promotes it.
    Returns what it did, in a sentence."""
    config = apply_overrides(config or PipelineConfig(), settings)
    registry = Registry(configure_tracking(settings.tracking_uri, store_dir=settings.store_dir))
    data = load_prepared(settings, config)
    described = f"{data.dataset.name!r} (data fingerprint {data.fingerprint})"
    why = ""
    if registry.champion_exists():
        champion = registry.resolve(CHAMPION)
        trained_on = registry.data_fingerprint(champion)
        servable = _servable(registry, champion)
        if trained_on == data.fingerprint and servable:
            return f"The champion was trained on {described}: nothing to train."
        if trained_on is None and servable:
            return ("The champion records no data fingerprint (registered by older code): "
                    "kept. `python -m training run --promote always` replaces it.")
        why = ("The champion's ranker takes other features than this code computes, so it "
               "cannot be served. " if not servable else
               f"The champion was trained on other data ({trained_on}). ")
        earlier = next((s for s in registry.sets_trained_on(data.fingerprint)
                        if _servable(registry, s)), None)  # reads metadata until one serves
        if earlier is not None:
            registry.promote_versions(earlier)
            return (f"{why}The newest set trained on {described} that this code can serve is "
                    f"champion again: {earlier.describe()}.")
    result = run_pipeline(settings, config, promote="always")
    return (f"{why}Trained on {described} and promoted: {result.model_set.describe()}.\n"
            f"{result.report.table}")


def _servable(registry: Registry, model_set: ModelSet) -> bool:
    """Whether this code computes the features the set's ranker was trained on (a set
    registered before the ranker's features changed fails the service at start-up)."""
    return registry.ranker_features(model_set) == list(DENSE_FEATURES)


def describe(result: PipelineResult) -> dict[str, Any]:
    ms = result.model_set
    return {"tracking_uri": result.tracking_uri, "promoted_to_champion": result.promoted,
            "versions": {"embedding": ms.embedding, "ranker": ms.ranker, "fallback": ms.fallback},
            "timings_s": result.timings, "diagnostics": result.report.diagnostics,
            "pipeline_over_popularity_hr10": round(result.report.hr10_ratio(), 3)}
