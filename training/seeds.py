"""The evaluation over seeds: `python -m training seeds` trains and evaluates the default pipeline
once per seed (each in its own throwaway MLflow store, nothing promoted) and reports every figure
as a mean with a 95% t-interval over seeds, and the ranker's gain over retrieval order with a 95%
paired bootstrap interval over users, each user's gain averaged over the seeds first.

Layout: OUT/seed-N/ holds one run's workdir (evaluation.json, test_ranks.npz, plots);
OUT/summary.json, OUT/summary.md and OUT/cold_start.png the summary.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from training.evaluate import interval, mean_gain_interval, per_user_metrics

MODELS = ("popularity", "als", "ease", "retrieval", "pipeline", "pipeline_int8",
          "pipeline_returning", "fallback")
METRICS = ("hr@10", "ndcg@10", "recall@50")


def run_seed(data_path: Path | None, seed: int, out: Path) -> Path:
    """Train and evaluate seed `seed` into out/seed-N (replaced if there); returns that folder."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    from training.pipeline import run_pipeline
    from training.settings import TrainingSettings

    folder = out / f"seed-{seed}"
    if folder.exists():
        shutil.rmtree(folder)
    settings = TrainingSettings(data_path=data_path, workdir=folder / "work",
                                store_dir=folder / "store", tracking_uri=None, seed=seed)
    result = run_pipeline(settings, promote="never")
    (folder / "work" / "timings.json").write_text(json.dumps(result.timings))
    return folder


def run_seeds(data_path: Path | None, seeds: Sequence[int], out: Path, jobs: int = 1) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        for folder in pool.map(run_seed, [data_path] * len(seeds), seeds, [out] * len(seeds)):
            print(f"done: {folder}")


def seed_gain(ranks: Sequence[dict[str, np.ndarray]], model: str, baseline: str,
              resamples: int = 2000) -> dict[str, dict[str, float]]:
    """The per-user gain of `model` over `baseline`, averaged over the seeds, with a 95% paired
    bootstrap interval over users (BCa)."""
    return {metric: mean_gain_interval(np.mean([per_user_metrics(r[model], 10)[metric]
                                                 - per_user_metrics(r[baseline], 10)[metric]
                                                 for r in ranks], axis=0), resamples)
            for metric in ("hr@10", "ndcg@10")}


def summarise(out: Path) -> dict[str, Any]:
    """Read every out/seed-N/work and write summary.json, summary.md and cold_start.png."""
    folders = sorted(out.glob("seed-*/work"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not folders:
        raise ValueError(f"no seed-N/work folders under {out}: run `python -m training seeds`")
    runs = [json.loads((f / "evaluation.json").read_text()) for f in folders]
    ranks = [dict(np.load(f / "test_ranks.npz")) for f in folders]
    if any(not np.array_equal(r["user_ids"], ranks[0]["user_ids"]) for r in ranks):
        raise ValueError("the seeds were evaluated on different test users: not comparable")
    models = [m for m in MODELS if all(m in run["results"] for run in runs)]
    table = {m: {k: interval([run["results"][m][k] for run in runs]) for k in METRICS}
             for m in models}
    curve = pd.concat([pd.DataFrame(run["cold_start"]).assign(seed=i)
                       for i, run in enumerate(runs)])
    cold = {f"{model}@{n}": interval(part["hr@10"].tolist())
            for (n, model), part in curve.groupby(["history", "model"], sort=False)}
    summary = {
        "seeds": [int(f.parent.name.split("-")[1]) for f in folders],
        "results": table,
        "significance": {f"{m}_vs_retrieval": seed_gain(ranks, m, "retrieval")
                         for m in ("pipeline", "ease", "als") if m in models},
        "cold_start_hr@10": cold,
        # the test users whose last two events share a second, and the rest
        "by_tie": {group: {m: {k: interval([run["by_tie"][group][m][k] for run in runs])
                               for k in ("hr@10", "ndcg@10")} for m in models}
                   for group in ("tied", "untied")
                   if all(group in run.get("by_tie", {}) for run in runs)},
        "user_encoder": [run.get("embedding", {}).get("user_encoder") for run in runs],
        "ranking_policy": [run.get("ranking_policy") for run in runs],
        "timings_s": {k: interval([json.loads((f / "timings.json").read_text())[k]
                                   for f in folders])
                      for k in ("two_tower", "rankers", "evaluation")
                      if all((f / "timings.json").exists() for f in folders)},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(markdown(summary))
    fig = plot_cold_start(curve)
    fig.savefig(out / "cold_start.png", dpi=110)
    plt.close(fig)
    return summary


def _cell(value: dict[str, float]) -> str:
    return f"{value['mean']:.4f} ± {value['ci95']:.4f}"


def markdown(summary: dict[str, Any]) -> str:
    seeds = len(summary["seeds"])
    lines = [f"Mean ± 95% t-interval half-width over {seeds} seeds ({summary['seeds']}).", "",
             "| model | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    lines += [f"| {m} | " + " | ".join(_cell(v[k]) for k in METRICS) + " |"
              for m, v in summary["results"].items()]
    gain = ("Gain over retrieval order, per user averaged over the seeds, with a 95% paired "
            "bootstrap interval over users:")
    lines += ["", gain, "", "| model | metric | gain | 95% interval |", "|---|---|---|---|"]
    lines += [f"| {pair.removesuffix('_vs_retrieval')} | {metric} | {v['gain']:+.4f} | "
              f"[{v['low']:+.4f}, {v['high']:+.4f}]{' significant' if v['significant'] else ''} |"
              for pair, metrics in summary["significance"].items() for metric, v in metrics.items()]
    for group, by_model in summary["by_tie"].items():
        lines += ["", f"Test users {group} (HR@10 / NDCG@10):", ""]
        lines += [f"- {m}: {_cell(v['hr@10'])} / {_cell(v['ndcg@10'])}" for m, v in by_model.items()]
    lines += ["", "A new user's HR@10 with n events:", "", "| model @ n | HR@10 |", "|---|---|"]
    lines += [f"| {name} | {_cell(v)} |" for name, v in summary["cold_start_hr@10"].items()]
    return "\n".join(lines) + "\n"


def plot_cold_start(curve: pd.DataFrame) -> Figure:
    """Mean HR@10 against the number of events, one line per model, the 95% interval shaded."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for model, part in curve.groupby("model", sort=False):
        by_n = part.groupby("history")["hr@10"]
        n = np.asarray(sorted(part["history"].unique()))
        mean = by_n.mean().reindex(n).to_numpy()
        half = np.array([interval(by_n.get_group(k).tolist())["ci95"] for k in n])
        ax.plot(n, mean, marker="o", label=str(model))
        ax.fill_between(n, mean - half, mean + half, alpha=0.15)
    ax.set(xlabel="events the user has (the most recent kept, the rest hidden)", ylabel="HR@10",
           title=f"A new user's HR@10 as events arrive ({curve['seed'].nunique()} seeds, 95% CI)",
           xticks=sorted(curve["history"].unique()))
    ax.legend()
    fig.tight_layout()
    return fig
