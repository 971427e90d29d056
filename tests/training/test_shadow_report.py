"""Shadow report: frame, summary and verdict on hand-made records; then on a real served log."""
from __future__ import annotations

import asyncio
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from recsys.app.assembly import build_runtime
from recsys.experiments.shadow_records import ScoredList, ShadowRecord, agreement
from recsys.experiments.shadow_sinks import read_shadow_log
from recsys.pipeline.request import RecommendRequest
from recsys.settings import ServingSettings
from recsys.telemetry import Telemetry
from registry import Registry
from tests.support.fixtures_models import TrainedModels
from training import plots
from training.config import EvalConfig
from training.shadow_report import (
    COLUMNS,
    PairedTest,
    VerdictRules,
    load_comparison_data,
    load_registered,
    offline_comparison,
    offline_metrics,
    paired_test,
    plot_latency,
    plot_offline,
    plot_overlap,
    shadow_frame,
    summarize,
    verdict,
)
from training.steps import evaluate_models
from training.workdir import load_bundles

CHAMPION_VERSIONS = {"embedding": "emb:1", "ranker": "rank:1"}
CHALLENGER_VERSIONS = {"embedding": "emb:2", "ranker": "rank:2"}


def record(n: int, champion_ms: float = 10.0, challenger_ms: float = 11.0,
           error: str | None = None, shift: int = 1) -> ShadowRecord:
    """Champion items 0..9; the challenger's list is the same shifted by `shift` places."""
    items = list(range(10))
    champion = ScoredList(CHAMPION_VERSIONS, items, [1.0 - i / 10 for i in items], champion_ms)
    if error is not None:
        return ShadowRecord(f"r{n}", f"u{n}", 1.0 * n, 10, champion, error=error)
    theirs = [i + shift for i in items]
    challenger = ScoredList(CHALLENGER_VERSIONS, theirs, [0.5] * 10, challenger_ms)
    metrics = agreement(items, theirs, 10, champion_scores=champion.scores,
                        challenger_scores=challenger.scores)
    return ShadowRecord(f"r{n}", f"u{n}", 1.0 * n, 10, champion, challenger, agreement=metrics)


def healthy(count: int = 60) -> list[ShadowRecord]:
    """Latencies 1..count ms for the champion, 1.1x that for the challenger."""
    return [record(n, champion_ms=n + 1.0, challenger_ms=1.1 * (n + 1)) for n in range(count)]


def offline(champion_hr: float = 0.20, challenger_hr: float = 0.22) -> dict:
    return {alias: {"pipeline": {"hr@10": hr, "ndcg@10": hr / 2}, "retrieval": {"hr@10": 0.1}}
            for alias, hr in (("champion", champion_hr), ("challenger", challenger_hr))}


# --- frame and summary ---------------------------------------------------------------------
def paired(p_value: float = 0.01, champion_hr: float = 0.20,
           challenger_hr: float = 0.22) -> PairedTest:
    """A sign test's outcome on 500 users (what `paired_test` measures on real models)."""
    return PairedTest(10, 500, champion_hr, challenger_hr, 30, 20, p_value, 0.001, 0.04)


def test_frame_has_one_row_per_record_and_nan_where_the_challenger_failed() -> None:
    frame = shadow_frame([record(0), record(1, error="TimeoutError: too slow")])
    assert list(frame.columns) == list(COLUMNS)
    assert frame["request_id"].tolist() == ["r0", "r1"]
    assert frame.loc[0, "overlap_at_k"] == pytest.approx(0.9)
    assert frame.loc[0, "versions"] == "emb:1, rank:1 -> emb:2, rank:2"
    assert frame.loc[1, "versions"] == "emb:1, rank:1"
    assert frame.loc[1, "error"] == "TimeoutError: too slow"
    assert math.isnan(frame.loc[1, "overlap_at_k"]) and math.isnan(frame.loc[1, "challenger_ms"])


def test_summary_counts_errors_agreement_and_latency_quantiles() -> None:
    records = healthy(58) + [record(n, champion_ms=n + 1.0, error="boom") for n in (58, 59)]
    summary = summarize(shadow_frame(records))
    assert summary["n"] == 60 and summary["errors"] == 2
    assert summary["error_rate"] == pytest.approx(2 / 60)
    assert summary["overlap_mean"] == pytest.approx(0.9)
    assert summary["overlap_median"] == pytest.approx(0.9)
    assert summary["spearman_mean"] == pytest.approx(1.0)
    assert summary["kendall_mean"] == pytest.approx(1.0)
    assert summary["champion_p50_ms"] == pytest.approx(np.quantile(np.arange(1, 61), 0.5))
    assert summary["champion_p95_ms"] == pytest.approx(np.quantile(np.arange(1, 61), 0.95))
    assert summary["challenger_p95_ms"] == pytest.approx(np.quantile(1.1 * np.arange(1, 59), 0.95))
    assert summary["p95_latency_ratio"] == pytest.approx(
        summary["challenger_p95_ms"] / summary["champion_p95_ms"])


def test_an_empty_log_summarises_to_nan_and_blocks_promotion() -> None:
    summary = summarize(shadow_frame([]))
    assert summary["n"] == 0 and math.isnan(summary["error_rate"])
    assert math.isnan(summary["p95_latency_ratio"])
    result = verdict(summary, offline(), VerdictRules(), paired())
    assert not result.promote
    assert result.failed == ["min_records", "max_error_rate", "max_p95_latency_ratio"]


# --- verdict -------------------------------------------------------------------------------
def test_a_challenger_passing_every_rule_is_promoted_with_a_reason_per_rule() -> None:
    result = verdict(summarize(shadow_frame(healthy())), offline(), VerdictRules(), paired())
    assert result.promote and result.failed == []
    assert len(result.reasons) == 5
    assert all(r.startswith("Passes: ") and r.endswith(".") for r in result.reasons)
    assert "60 shadow records" in result.reasons[0]
    assert "0 of 60 shadowed requests (0.0%)" in result.reasons[1]
    assert "(1.10x) and the limit is 1.25x" in result.reasons[2]
    assert "0.2200 against the champion's 0.2000 (+10.0%)" in result.reasons[3]
    assert "500 users the challenger's pipeline alone hit 30 and the champion's alone 20 " \
        "(sign test p=0.01" in result.reasons[4]


@pytest.mark.parametrize(("rule", "records", "hr", "rules", "numbers"), [
    ("min_records", healthy(49), (0.2, 0.22), VerdictRules(), "49 shadow records"),
    ("min_records", healthy(60), (0.2, 0.22), VerdictRules(min_records=61), "at least 61"),
    ("max_error_rate", healthy(59) + [record(59, error="ValueError: x")], (0.2, 0.22),
     VerdictRules(), "1 of 60 shadowed requests (1.7%) and the limit is 1.0%"),
    ("max_error_rate", healthy(60), (0.2, 0.22), VerdictRules(max_error_rate=-0.1),
     "limit is -10.0%"),
    ("max_p95_latency_ratio", [record(n, n + 1.0, 1.5 * (n + 1)) for n in range(60)],
     (0.2, 0.22), VerdictRules(), "(1.50x) and the limit is 1.25x"),
    ("max_p95_latency_ratio", healthy(60), (0.2, 0.22), VerdictRules(max_p95_latency_ratio=1.05),
     "(1.10x) and the limit is 1.05x"),
    ("min_hr10_gain", healthy(60), (0.2, 0.19), VerdictRules(), "(-5.0%)"),
    ("min_hr10_gain", healthy(60), (0.2, 0.22), VerdictRules(min_hr10_gain=0.15),
     "(+10.0%) and the minimum gain is +15.0%"),
    ("max_p_value", healthy(60), (0.2, 0.22), VerdictRules(max_p_value=0.005),
     "significant at p <= 0.005"),
], ids=["few-records", "min-records-raised", "errors", "error-limit-lowered", "slow",
        "latency-limit-lowered", "worse-offline", "gain-raised", "not-significant"])
def test_each_rule_alone_can_block_promotion(rule: str, records: list[ShadowRecord],
                                             hr: tuple[float, float], rules: VerdictRules,
                                             numbers: str) -> None:
    result = verdict(summarize(shadow_frame(records)), offline(*hr), rules, paired())
    assert not result.promote
    assert result.failed == [rule]
    blocking = [r for r in result.reasons if r.startswith("Blocks promotion: ")]
    assert len(blocking) == 1 and numbers in blocking[0]


def test_no_champion_hits_counts_any_challenger_hit_as_a_gain() -> None:
    summary = summarize(shadow_frame(healthy()))
    assert verdict(summary, offline(0.0, 0.01), VerdictRules(min_hr10_gain=0.5),
                   paired()).promote
    # no gain at all is never significant: "gain >= 0.0" alone no longer promotes
    assert not verdict(summary, offline(0.0, 0.0), VerdictRules(), paired(1.0)).promote
    assert verdict(summary, offline(0.0, 0.0), VerdictRules(max_p_value=1.0), paired(1.0)).promote


def test_offline_metrics_are_flat_mlflow_names() -> None:
    assert offline_metrics(offline())["offline_challenger_pipeline_hr_at_10"] == 0.22


# --- a real served log ---------------------------------------------------------------------
def write_shadow_log(models: TrainedModels, path: Path, requests: int = 60) -> dict[str, int]:
    """Serve `requests` recommendations (known and new users) with every request shadowed by
    the challenger, writing `path`; returns the scorer's counts once every record is written."""
    settings = ServingSettings(shadow_fraction=1.0, shadow_log=str(path))
    runtime = build_runtime(settings, [models.refs("champion"), models.refs("challenger")],
                            Telemetry())
    shadow = runtime.shadow
    assert shadow is not None
    users = runtime.pipeline.resolver.champion.embedding.users
    known = [str(u) for u in users.user_ids] if users is not None else []

    async def serve() -> dict[str, int]:
        await runtime.start()
        try:
            for n in range(requests):
                user = known[n % len(known)] if known and n % 6 else f"new-user-{n}"
                await runtime.pipeline.respond(RecommendRequest(user, 10))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and sum(
                    shadow.counts.get(c, 0) for c in ("written", "sink_error", "dropped",
                                                      "worker_error")) < requests:
                await asyncio.sleep(0.02)
        finally:
            await runtime.aclose()
        return shadow.counts

    return asyncio.run(serve())


@pytest.mark.slow
def test_report_on_a_real_shadow_log_and_registered_models(trained_models: TrainedModels,
                                                           tmp_path: Path) -> None:
    log = tmp_path / "shadow.jsonl"
    counts = write_shadow_log(trained_models, log, 60)
    assert counts["submitted"] == counts["written"] == 60

    frame = shadow_frame(read_shadow_log(log))
    summary = summarize(frame)
    assert summary["n"] == 60 and 0.0 <= summary["error_rate"] <= 1.0
    assert 0.0 <= summary["overlap_mean"] <= 1.0
    assert summary["champion_p95_ms"] > 0 and summary["challenger_p95_ms"] > 0
    assert math.isfinite(summary["p95_latency_ratio"])
    champion_tags = sorted(trained_models.refs("champion").versions.values())
    assert all(v.startswith(", ".join(champion_tags)) for v in frame["versions"])

    registry = Registry(trained_models.tracking_uri)
    data = load_comparison_data(registry)  # the champion's synthetic data, regenerated
    champion = load_registered(registry, "champion", tmp_path / "bundles")
    challenger = load_registered(registry, "challenger", tmp_path / "bundles")
    assert champion[0].fingerprint != challenger[0].fingerprint
    config = EvalConfig()
    result = offline_comparison(data, champion, challenger, config)
    assert set(result) == {"champion", "challenger"}
    for models in result.values():
        assert set(models) == {"retrieval", "pipeline", "pipeline_int8", "pipeline_returning",
                               "fallback"}
        assert all(0.0 <= m["hr@10"] <= 1.0 for m in models.values())
    # The champion was trained on this data: the same numbers as its own workdir's bundles.
    own = evaluate_models(data, *load_bundles(trained_models.workdirs["champion"]), config,
                          baselines=False)
    assert set(own) == set(result["champion"])
    for model, metrics in own.items():
        assert result["champion"][model] == pytest.approx(metrics)

    test = paired_test(data, champion, challenger, config)
    assert test.users > 0 and test.champion_hr == pytest.approx(result["champion"]["pipeline"]["hr@10"])
    assert test.challenger_hr == pytest.approx(result["challenger"]["pipeline"]["hr@10"])
    assert test.challenger_hr - test.champion_hr == pytest.approx(
        (test.wins - test.losses) / test.users)
    assert test.gain_low <= test.challenger_hr - test.champion_hr <= test.gain_high
    assert 0.0 < test.p_value <= 1.0
    itself = paired_test(data, champion, champion, config)
    assert (itself.wins, itself.losses, itself.p_value, itself.gain_low, itself.gain_high) == (
        0, 0, 1.0, 0.0, 0.0)

    decision = verdict(summary, result, VerdictRules(), test)
    assert len(decision.reasons) == 5 and decision.promote == (decision.failed == [])
    for figure in (plot_overlap(frame), plot_latency(frame), plot_offline(result)):
        assert isinstance(figure, Figure)
        plots.close(figure)


@pytest.mark.slow
def test_offline_comparison_refuses_a_catalogue_in_other_rows(trained_models: TrainedModels) -> None:
    data = load_comparison_data(Registry(trained_models.tracking_uri))
    models = load_bundles(trained_models.workdirs["champion"])
    shuffled = replace(data, catalog=replace(data.catalog,
                                             item_ids=data.catalog.item_ids[::-1].copy()))
    with pytest.raises(ValueError, match="does not list the evaluation data's 300 item ids"):
        offline_comparison(shuffled, models, models, EvalConfig())
