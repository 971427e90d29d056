"""The shadow scorer: off the request path, bounded, sampled alike in every worker, never raising."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from recsys.experiments.shadow import ShadowScorer
from recsys.experiments.shadow_sinks import read_shadow_log
from tests.support.events import Events
from tests.support.shadow import (
    CHALLENGER,
    CHAMPION,
    Challenger,
    jsonl_config,
    run,
)


def test_submit_returns_at_once_while_the_challenger_sleeps(tmp_path: Path) -> None:
    challenger = Challenger(delay_s=1.0)

    async def scenario() -> None:
        async with ShadowScorer(jsonl_config(tmp_path, challenger_timeout_s=5.0)) as scorer:
            queued = await asyncio.wait_for(scorer.submit("r1", "u1", CHAMPION, challenger()), 0.05)
            assert queued is True
            assert scorer.counts.get("written", 0) == 0
        assert scorer.counts["written"] == 1  # aclose drained the slow call

    run(scenario())
    (record,) = read_shadow_log(tmp_path / "s.jsonl")
    assert record.error is None and record.challenger is not None
    assert record.challenger.latency_ms == 6.0  # the callable's own figure is kept


def test_measures_challenger_latency_when_it_reports_none(tmp_path: Path) -> None:
    challenger = Challenger(replace(CHALLENGER, latency_ms=None), delay_s=0.05)

    async def scenario() -> None:
        async with ShadowScorer(jsonl_config(tmp_path)) as scorer:
            await scorer.submit("r1", "u1", CHAMPION, challenger())

    run(scenario())
    (record,) = read_shadow_log(tmp_path / "s.jsonl")
    assert record.challenger is not None and record.challenger.latency_ms is not None
    assert 40.0 <= record.challenger.latency_ms < 2000.0


def test_submit_never_calls_the_challenger_itself(tmp_path: Path) -> None:
    challenger = Challenger()

    async def scenario() -> None:
        scorer = ShadowScorer(jsonl_config(tmp_path))  # not started: nothing runs the queue
        assert await scorer.submit("r1", "u1", CHAMPION, challenger())
        await asyncio.sleep(0.01)
        assert challenger.calls == 0
        await scorer.aclose()
        assert scorer.counts["dropped"] == 1  # never started: dropped at shutdown

    run(scenario())


def test_queue_overflow_drops_and_counts(tmp_path: Path) -> None:
    events = Events()

    async def scenario() -> None:
        scorer = ShadowScorer(jsonl_config(tmp_path, max_queue=2), on_event=events)
        queued = [await scorer.submit(f"r{i}", "u1", CHAMPION, Challenger()()) for i in range(5)]
        assert queued == [True, True, False, False, False]
        scorer.start()
        await scorer.aclose()
        assert scorer.counts == {"submitted": 2, "dropped": 3, "scored": 2, "written": 2}
        assert await scorer.submit("late", "u1", CHAMPION, Challenger()()) is False

    run(scenario())
    assert events.count("shadow_dropped", reason="queue_full") == 3
    assert events.count("shadow_dropped", reason="closed") == 1
    assert len(read_shadow_log(tmp_path / "s.jsonl")) == 2


def test_challenger_errors_and_timeouts_are_recorded_not_raised(tmp_path: Path) -> None:
    events = Events()
    cases = {
        "boom": Challenger(RuntimeError("model exploded")),
        "slow": Challenger(delay_s=1.0),
        "wrong": Challenger(result={"items": [1]}),
        "ok": Challenger(),
    }

    async def scenario() -> None:
        config = jsonl_config(tmp_path, challenger_timeout_s=0.1, workers=2)
        async with ShadowScorer(config, on_event=events) as scorer:
            for request_id, challenger in cases.items():
                await scorer.submit(request_id, "u1", CHAMPION, challenger())
        assert scorer.counts["challenger_error"] == 3
        assert scorer.counts["written"] == 4

    run(scenario())
    records = {r.request_id: r for r in read_shadow_log(tmp_path / "s.jsonl")}
    assert records["boom"].error == "RuntimeError: model exploded"
    assert records["slow"].error == "TimeoutError: no challenger result within 0.1s"
    assert records["wrong"].error is not None and "not ScoredList" in records["wrong"].error
    for request_id in ("boom", "slow", "wrong"):
        assert records[request_id].challenger is None
        assert records[request_id].agreement is None
    assert records["ok"].challenger == CHALLENGER
    assert events.count("shadow_challenger_error", reason="exception", error="RuntimeError") == 1
    assert events.count("shadow_challenger_error", reason="timeout") == 1
    assert events.count("shadow_scored") == 1


def test_scored_event_carries_the_agreement(tmp_path: Path) -> None:
    events = Events()

    async def scenario() -> None:
        async with ShadowScorer(jsonl_config(tmp_path), on_event=events) as scorer:
            await scorer.submit("r1", "u1", CHAMPION, Challenger()())

    run(scenario())
    ((_, labels),) = [(n, lab) for n, lab in events.seen if n == "shadow_scored"]
    assert float(labels["overlap"]) == 0.75
    assert float(labels["challenger_ms"]) == 6.0
    assert set(labels) == {
        "overlap",
        "spearman",
        "kendall",
        "mean_score_delta",
        "challenger_ms",
    }


def test_close_gives_up_draining_after_the_timeout(tmp_path: Path) -> None:
    events = Events()

    async def scenario() -> None:
        config = jsonl_config(tmp_path, challenger_timeout_s=30.0, drain_timeout_s=0.1)
        scorer = ShadowScorer(config, on_event=events)
        scorer.start()
        await scorer.submit("r1", "u1", CHAMPION, Challenger(delay_s=30.0)())
        await scorer.submit("r2", "u1", CHAMPION, Challenger(delay_s=30.0)())
        started = time.monotonic()
        await scorer.aclose()
        assert time.monotonic() - started < 2.0
        assert scorer.counts["dropped"] == 2  # one in flight, one still queued

    run(scenario())
    assert events.count("shadow_dropped", reason="shutdown") == 2


@pytest.mark.parametrize(
    ("fraction", "low", "high"), [(0.0, 0, 0), (1.0, 5000, 5000), (0.3, 1400, 1600)]
)
def test_sampling_fraction(tmp_path: Path, fraction: float, low: int, high: int) -> None:
    scorer = ShadowScorer(jsonl_config(tmp_path, fraction=fraction))
    ids = [f"req-{i:06d}" for i in range(5000)]
    sampled = sum(scorer.should_shadow(rid) for rid in ids)
    assert low <= sampled <= high
    again = ShadowScorer(jsonl_config(tmp_path, fraction=fraction))
    assert [again.should_shadow(rid) for rid in ids] == [scorer.should_shadow(rid) for rid in ids]


def test_sampling_depends_on_the_salt(tmp_path: Path) -> None:
    ids = [f"req-{i}" for i in range(2000)]
    a = ShadowScorer(jsonl_config(tmp_path, fraction=0.5, salt="a"))
    b = ShadowScorer(jsonl_config(tmp_path, fraction=0.5, salt="b"))
    differ = sum(a.should_shadow(rid) != b.should_shadow(rid) for rid in ids)
    assert 0.4 < differ / len(ids) < 0.6


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"fraction": 1.5}, r"fraction must be in \[0, 1\], got 1.5"),
        ({"max_queue": 0}, "max_queue must be >= 1, got 0"),
        ({"challenger_timeout_s": 0}, "challenger_timeout_s must be > 0"),
        ({"sink": "kafka"}, "sink must be 'jsonl' or 'redis', got 'kafka'"),
        ({"jsonl_path": None}, "sink 'jsonl' needs jsonl_path"),
        ({"sink": "redis"}, "sink 'redis' needs redis_url"),
    ],
)
def test_config_errors_name_the_setting(tmp_path: Path, changes: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        jsonl_config(tmp_path, **changes)


def test_submit_rejects_a_k_below_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        scorer = ShadowScorer(jsonl_config(tmp_path))
        with pytest.raises(ValueError, match="k must be >= 1, got 0"):
            await scorer.submit("r1", "u1", CHAMPION, Challenger()(), k=0)
        await scorer.aclose()

    run(scenario())
