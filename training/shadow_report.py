"""Champion vs challenger: the shadow log, offline metrics on one eval set, and a promotion verdict."""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import binomtest

from recsys.experiments.shadow_records import ShadowRecord
from recsys.models.bundles import EmbeddingBundle, check_compatible
from registry import Registry
from training import plots
from training.config import EvalConfig, PipelineConfig
from training.pipeline import load_prepared
from training.settings import TrainingSettings
from training.steps import PreparedData, Rankers, evaluate_models, pipeline_ranks

AGREEMENT = ("overlap_at_k", "spearman", "kendall", "mean_score_delta")
COLUMNS = ("request_id", "user_id", "k", *AGREEMENT, "champion_ms", "challenger_ms", "error",
           "versions")
Offline = dict[str, dict[str, dict[str, float]]]  # alias -> model -> metric -> value
Models = tuple[EmbeddingBundle, Rankers]


# --- the shadow log ------------------------------------------------------------------------
def shadow_frame(records: Iterable[ShadowRecord]) -> pd.DataFrame:
    """One row per record (``COLUMNS``). Agreement columns are NaN where undefined or where the
    challenger failed (``error`` holds its message, else None); latencies in ms; ``versions`` is
    "champion versions -> challenger versions" (the champion's alone after an error)."""
    rows = []
    for record in records:
        agreement = record.agreement or {}
        challenger = record.challenger
        rows.append({"request_id": record.request_id, "user_id": record.user_id, "k": record.k,
                     **{name: agreement.get(name) for name in AGREEMENT},
                     "champion_ms": record.champion.latency_ms,
                     "challenger_ms": None if challenger is None else challenger.latency_ms,
                     "error": record.error, "versions": _versions(record)})
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    numeric = [*AGREEMENT, "champion_ms", "challenger_ms"]
    frame[numeric] = frame[numeric].astype(float)
    return frame


def _versions(record: ShadowRecord) -> str:
    champion = ", ".join(sorted(record.champion.versions.values()))
    if record.challenger is None:
        return champion
    return f"{champion} -> {', '.join(sorted(record.challenger.versions.values()))}"


def summarize(frame: pd.DataFrame) -> dict[str, float]:
    """n, errors, error_rate, overlap mean/median, mean spearman/kendall and score delta, p50/p95
    latency (ms) of champion and challenger and ``p95_latency_ratio`` (challenger / champion).
    Undefined values (no records, no challenger answers) are NaN."""
    n, errors = len(frame), int(frame["error"].notna().sum())
    champion, challenger = frame["champion_ms"].dropna(), frame["challenger_ms"].dropna()
    p95 = _quantile(champion, 0.95), _quantile(challenger, 0.95)
    return {
        "n": n, "errors": errors, "error_rate": errors / n if n else math.nan,
        "overlap_mean": float(frame["overlap_at_k"].mean()),
        "overlap_median": float(frame["overlap_at_k"].median()),
        "spearman_mean": float(frame["spearman"].mean()),
        "kendall_mean": float(frame["kendall"].mean()),
        "score_delta_mean": float(frame["mean_score_delta"].mean()),
        "champion_p50_ms": _quantile(champion, 0.5), "champion_p95_ms": p95[0],
        "challenger_p50_ms": _quantile(challenger, 0.5), "challenger_p95_ms": p95[1],
        "p95_latency_ratio": p95[1] / p95[0] if p95[0] > 0 else math.nan,
    }


def _quantile(values: pd.Series, q: float) -> float:
    return float(values.quantile(q)) if len(values) else math.nan


# --- offline comparison --------------------------------------------------------------------
def training_data_settings(registry: Registry, alias: str = "champion") -> dict[str, Any]:
    """Data the ``alias`` embedding model was trained on, read from its MLflow run: ``dataset``,
    ``data_fingerprint`` and the TrainingSettings fields that regenerate synthetic data."""
    name = registry.names.embedding
    version = registry.version_of(name, alias)
    run_id = registry.client.get_model_version(name, version).run_id
    if not run_id:
        raise ValueError(f"{name} version {version} ({alias}) has no MLflow run to read data from")
    run = registry.client.get_run(run_id)
    summary_path = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="data_summary.json", tracking_uri=registry.tracking_uri)
    summary = json.loads(Path(summary_path).read_text())
    return {"dataset": run.data.tags["dataset"], "data_fingerprint": run.data.tags["data_fingerprint"],
            "synthetic_users": int(summary["users"]), "synthetic_items": int(summary["items"]),
            "seed": int(run.data.params["two_tower.seed"])}


def load_comparison_data(registry: Registry, data_path: str | Path | None = None,
                         alias: str = "champion") -> PreparedData:
    """``data_path`` prepared as in training; None regenerates the synthetic data ``alias`` was
    trained on (ValueError when it was not synthetic or the fingerprint does not match)."""
    if data_path is not None:
        return load_prepared(TrainingSettings(data_path=Path(data_path)), PipelineConfig())
    trained = training_data_settings(registry, alias)
    if trained["dataset"] != "synthetic":
        raise ValueError(f"the {alias} was trained on dataset {trained['dataset']!r}, not on "
                         "synthetic data: pass its data_path")
    keys = ("synthetic_users", "synthetic_items", "seed")
    settings = TrainingSettings(data_path=None, **{key: trained[key] for key in keys})
    data = load_prepared(settings, PipelineConfig())
    if data.fingerprint != trained["data_fingerprint"]:
        raise ValueError(f"synthetic data {data.summary()} has fingerprint {data.fingerprint}, "
                         f"but the {alias} was trained on {trained['data_fingerprint']}: pass "
                         "its data_path")
    return data


def load_registered(registry: Registry, alias: str, dest: Path) -> Models:
    """Download ``alias``'s three bundles under ``dest/alias`` and load them, checked to pair."""
    paths = {kind: registry.download(name, alias, Path(dest) / alias / kind)
             for kind, name in registry.names.by_kind().items()}
    embedding = EmbeddingBundle.load(paths["embedding"])
    rankers = Rankers.load(paths["ranker"], paths["fallback_ranker"])
    check_compatible(embedding, rankers.ranker)
    check_compatible(embedding, rankers.fallback)
    return embedding, rankers


def offline_comparison(data: PreparedData, champion: Models, challenger: Models,
                       eval_config: EvalConfig, baselines: bool = False) -> Offline:
    """``evaluate_models`` for both aliases on ``data.test``: the same users and held-out items.

    Each model set reads item content and user attributes from its own bundle, as it does when
    serving; both catalogues must list the data's item ids in the same rows (ValueError).
    """
    return {alias: evaluate_models(_as_seen_by(data, embedding, alias), embedding, rankers,
                                   eval_config, data.test, baselines=baselines)
            for alias, (embedding, rankers) in (("champion", champion), ("challenger", challenger))}


def _as_seen_by(data: PreparedData, embedding: EmbeddingBundle, alias: str) -> PreparedData:
    ours, theirs = data.catalog.item_ids, embedding.catalog.item_ids
    if not np.array_equal(ours, theirs):
        raise ValueError(f"the {alias} catalogue ({len(theirs) - 1} items, {embedding.path}) "
                         f"does not list the evaluation data's {len(ours) - 1} item ids in the "
                         "same rows: evaluate on the data it was trained on")
    return replace(data, catalog=embedding.catalog, attributes=embedding.attributes)


def offline_metrics(offline: Offline) -> dict[str, float]:
    """Flat MLflow metric names: offline_<alias>_<model>_hr_at_10 and so on."""
    return {f"offline_{alias}_{model}_{name.replace('@', '_at_')}": value
            for alias, results in offline.items() for model, metrics in results.items()
            for name, value in metrics.items()}


@dataclass(frozen=True)
class PairedTest:
    """Champion and challenger pipelines on the same users: HR@k of each, the users only one of
    them hit (wins: the challenger), the one-sided sign test of wins against losses (exact
    McNemar: is the challenger better?) and a paired bootstrap 95% interval of the HR@k gain."""

    k: int
    users: int
    champion_hr: float
    challenger_hr: float
    wins: int
    losses: int
    p_value: float
    gain_low: float  # absolute HR@k difference, 2.5th percentile of the bootstrap
    gain_high: float

    def to_dict(self) -> dict[str, float]:
        return {name: float(value) for name, value in self.__dict__.items()}


def paired_test(data: PreparedData, champion: Models, challenger: Models,
                eval_config: EvalConfig, k: int = 10, resamples: int = 2000,
                seed: int = 0) -> PairedTest:
    """The per-user comparison of the two model sets on ``data.test`` (see PairedTest)."""
    hits = {alias: pipeline_ranks(_as_seen_by(data, embedding, alias), embedding, rankers,
                                  eval_config) < k
            for alias, (embedding, rankers) in (("champion", champion),
                                                ("challenger", challenger))}
    old, new = hits["champion"], hits["challenger"]
    wins, losses = int((new & ~old).sum()), int((old & ~new).sum())
    p = binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue if wins + losses else 1.0
    rng = np.random.default_rng(seed)
    diff = new.astype(np.float64) - old.astype(np.float64)
    draws = rng.integers(0, len(diff), size=(resamples, len(diff))) if len(diff) else None
    gains = diff[draws].mean(axis=1) if draws is not None else np.zeros(1)
    return PairedTest(k, len(diff), float(old.mean()) if len(old) else 0.0,
                      float(new.mean()) if len(new) else 0.0, wins, losses, float(p),
                      float(np.quantile(gains, 0.025)), float(np.quantile(gains, 0.975)))


# --- verdict -------------------------------------------------------------------------------
@dataclass(frozen=True)
class VerdictRules:
    min_hr10_gain: float = 0.0  # relative: 0.05 needs the challenger's HR@10 5% above
    max_p95_latency_ratio: float = 1.25  # challenger p95 / champion p95 in the shadow log
    max_error_rate: float = 0.01  # share of shadowed requests the challenger failed
    min_records: int = 50
    max_p_value: float = 0.05  # the per-user sign test of the HR@10 gain must be this sure
    model: str = "pipeline"  # which offline model's HR@10 is compared


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reasons: list[str]  # one sentence per rule, with its numbers
    failed: list[str] = field(default_factory=list)  # names of the rules that block promotion

    def to_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "reasons": self.reasons, "failed": self.failed}


def verdict(summary: Mapping[str, float], offline: Offline, rules: VerdictRules,
            paired: PairedTest) -> Verdict:
    """Promote only when every rule passes; a rule whose number is undefined (NaN) fails. A gain
    counts only when the per-user sign test finds it significant (``max_p_value``).

    Each reason starts "Passes:" or "Blocks promotion:" and gives the measured numbers.
    """
    n, errors, rate = int(summary["n"]), int(summary["errors"]), summary["error_rate"]
    ratio, limit = summary["p95_latency_ratio"], rules.max_p95_latency_ratio
    base, new = (offline[alias][rules.model]["hr@10"] for alias in ("champion", "challenger"))
    gain = (new - base) / base if base > 0 else (math.inf if new > 0 else 0.0)
    checks = [
        ("min_records", n >= rules.min_records,
         f"{n} shadow records were logged; the rules need at least {rules.min_records}."),
        ("max_error_rate", rate <= rules.max_error_rate,
         (f"the challenger failed on {errors} of {n} shadowed requests ({rate:.1%}) and the "
          f"limit is {rules.max_error_rate:.1%}.")),
        ("max_p95_latency_ratio", ratio <= limit,
         (f"the challenger's p95 latency is {summary['challenger_p95_ms']:.1f} ms against the "
          f"champion's {summary['champion_p95_ms']:.1f} ms ({ratio:.2f}x) and the limit is "
          f"{limit:.2f}x.")),
        ("min_hr10_gain", gain >= rules.min_hr10_gain,
         (f"the challenger's offline {rules.model} HR@10 is {new:.4f} against the champion's "
          f"{base:.4f} ({gain:+.1%}) and the minimum gain is {rules.min_hr10_gain:+.1%}.")),
        ("max_p_value", paired.p_value <= rules.max_p_value,
         (f"on the same {paired.users} users the challenger's pipeline alone hit {paired.wins} "
          f"and the champion's alone {paired.losses} (sign test p={paired.p_value:.3g}, HR@"
          f"{paired.k} gain 95% CI [{paired.gain_low:+.4f}, {paired.gain_high:+.4f}]) and the "
          f"gain must be significant at p <= {rules.max_p_value:g}.")),
    ]
    reasons = [f"{'Passes' if passed else 'Blocks promotion'}: {text}"
               for _, passed, text in checks]
    failed = [name for name, passed, _ in checks if not passed]
    return Verdict(not failed, reasons, failed)


# --- plots ---------------------------------------------------------------------------------
def plot_overlap(frame: pd.DataFrame) -> Figure:
    """Histograms of overlap@k and of the shared items' rank correlations."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.hist(frame["overlap_at_k"].dropna(), bins=np.linspace(0, 1, 21))
    left.set(title="top-k overlap", xlabel="overlap@k (shared / k)", ylabel="requests")
    right.hist([frame["spearman"].dropna(), frame["kendall"].dropna()],
               bins=np.linspace(-1, 1, 21), label=["Spearman", "Kendall"])
    right.set(title="rank correlation of shared items", xlabel="correlation", ylabel="requests")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_latency(frame: pd.DataFrame) -> Figure:
    """Empirical CDFs of the champion's served latency and the challenger's shadow latency."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for column, label in (("champion_ms", "champion (served)"),
                          ("challenger_ms", "challenger (shadow)")):
        values = np.sort(frame[column].dropna().to_numpy())
        if len(values):
            ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post",
                    label=f"{label}: p50 {np.quantile(values, 0.5):.1f} ms, "
                          f"p95 {np.quantile(values, 0.95):.1f} ms")
    ax.axhline(0.95, color="grey", linewidth=0.8, linestyle=":")
    ax.set(title="latency CDF", xlabel="ms", ylabel="share of requests")
    if ax.get_lines()[:-1]:  # the p95 guide line is not a series
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_offline(offline: Offline) -> Figure:
    """``plots.metrics_bar`` with one bar per alias and model on the shared test split."""
    fig = plots.metrics_bar({f"{alias} {model}": metrics for alias, results in offline.items()
                             for model, metrics in results.items()})
    fig.axes[0].set_title("Offline evaluation: champion vs challenger")
    return fig
