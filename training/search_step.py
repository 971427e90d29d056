"""The training run's search evaluation: known-item and personalised category search on the test
split with the settings the service uses (training/search_eval.py), logged beside the
recommendation metrics of the evaluation run."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow

from recsys.models.bundles import EmbeddingBundle
from training import plots
from training.search_eval import evaluate_served
from training.search_report import markdown, rows
from training.steps import PreparedData

LOGGED = ("known_item_clean", "known_item_typo", "known_item_clean_user", "known_item_typo_user",
          "category_bm25", "category_hybrid", "category_personalised")


@dataclass(frozen=True)
class SearchSection:
    result: dict[str, Any]  # JSON-ready: config, chosen (the served settings), test, seconds
    table: str  # markdown: the test table and the targets


def evaluate_search_step(data: PreparedData, embedding: EmbeddingBundle, seeds: tuple[int, ...],
                         workdir: Path) -> SearchSection | None:
    """Evaluate, log metrics and search_evaluation.png to the active MLflow run; None (nothing
    run) without seeds."""
    if not seeds:
        return None
    started = time.perf_counter()
    result = finite(evaluate_served(data, embedding, seeds))
    result["seconds"] = round(time.perf_counter() - started, 1)
    mlflow.log_metrics(metrics(result["test"]))
    mlflow.log_metric("search_evaluation_seconds", result["seconds"])
    fig = plots.search_bars(rows(result["test"]))
    fig.savefig(workdir / "search_evaluation.png", dpi=110)
    mlflow.log_figure(fig, "search_evaluation.png")
    plots.close(fig)
    return SearchSection(result, markdown(result))


def metrics(test: dict[str, Any]) -> dict[str, float]:
    """MLflow metric names: search_<queries>_hr_at_10 / _mrr_at_10 (means over the seeds)."""
    out = {f"search_{name}_{metric.replace('@', '_at_')}": test[f"{name}/{metric}"]["mean"]
           for name in LOGGED for metric in ("hr@10", "mrr@10")}
    ratio = test["personalised_over_bm25_hr@10"]["mean"]
    if ratio is not None:  # None when BM25 alone found no held-out item
        out["search_personalised_over_bm25_hr_at_10"] = ratio
    return out


def finite(value: Any) -> Any:
    """`value` with every infinite or NaN float as None: JSON has neither (a category ratio
    over a BM25 HR@10 of 0 is infinite)."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
