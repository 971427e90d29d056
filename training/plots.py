"""Plots for notebooks and run reports: offline metrics, search metrics and training curves."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg") if not matplotlib.get_backend().lower().startswith("module://") else None
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

MODEL_ORDER = ("popularity", "als", "ease", "retrieval", "fallback", "pipeline", "pipeline_int8",
               "pipeline_returning")


def metrics_bar(results: Mapping[str, Mapping[str, float]],
                metrics: Sequence[str] = ("hr@10", "ndcg@10", "recall@50")) -> Figure:
    """Grouped bars: one group per metric, one bar per model."""
    models = [m for m in MODEL_ORDER if m in results] + [m for m in results if m not in MODEL_ORDER]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        values = [results[model].get(m, 0.0) for m in metrics]
        positions = [j + i * width for j in range(len(metrics))]
        bars = ax.bar(positions, values, width, label=model)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(metrics))], metrics)
    ax.set_ylabel("score (leave-last-out test)")
    ax.legend(fontsize=8)
    ax.set_title("Offline evaluation")
    fig.tight_layout()
    return fig


def training_curves(history: Mapping[str, Sequence[float]], title: str) -> Figure:
    """One line per logged series (e.g. loss and validation HR@10) against the epoch."""
    fig, axes = plt.subplots(1, len(history), figsize=(4 * max(len(history), 1), 3), squeeze=False)
    for ax, (name, values) in zip(axes[0], history.items()):
        ax.plot(range(1, len(values) + 1), values, marker="o")
        ax.set_xlabel("epoch")
        ax.set_title(name)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    """Release a figure that was only saved or logged (pyplot keeps every open figure alive)."""
    plt.close(fig)


def search_bars(rows: Sequence[Mapping[str, float | str]]) -> Figure:
    """Horizontal bars of HR@10 per query kind with their 95% intervals (rows as
    training.search_report.rows gives them)."""
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    labels = [str(r["queries"]) for r in rows][::-1]
    values = [float(r["hr@10"]) for r in rows][::-1]
    errors = [float(r["hr@10 ±"]) for r in rows][::-1]
    bars = ax.barh(labels, values, xerr=errors, capsize=3)
    ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=4)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("HR@10 (test split, mean ± 95% over query seeds)")
    ax.set_title("Search: known-item and category queries")
    fig.tight_layout()
    return fig
