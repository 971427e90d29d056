"""Shadow scoring on real sinks (a JSONL file, a real redis-server): off-path, bounded, robust."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from devtools.local_redis import LocalRedis
from recsys.experiments.shadow import ShadowConfig, ShadowScorer
from recsys.experiments.shadow_records import ScoredList, ShadowRecord, agreement
from recsys.experiments.shadow_sinks import JsonlSink, RedisStreamSink, read_shadow_log
from tests.events import Events

NOW = 1_790_000_000.25
CHAMPION = ScoredList(
    {"retriever": "7", "ranker": "3"}, [10, 11, 12, 13], [0.9, 0.8, 0.7, 0.6], 4.5
)
CHALLENGER = ScoredList(
    {"retriever": "7", "ranker": "4"}, [11, 10, 14, 13], [0.5, 0.4, 0.3, 0.2], 6.0
)


class Challenger:
    """A challenger call factory that counts calls; optionally slow, failing or off-type."""

    def __init__(self, result: Any = CHALLENGER, delay_s: float = 0.0) -> None:
        self.result, self.delay_s, self.calls = result, delay_s, 0

    def __call__(self) -> Callable[[], Awaitable[Any]]:
        async def call() -> Any:
            self.calls += 1
            await asyncio.sleep(self.delay_s)
            if isinstance(self.result, Exception):
                raise self.result
            return self.result

        return call


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def jsonl_config(tmp_path: Path, **changes: Any) -> ShadowConfig:
    return replace(
        ShadowConfig(fraction=1.0, sink="jsonl", jsonl_path=str(tmp_path / "s.jsonl")), **changes
    )


def redis_config(url: str, **changes: Any) -> ShadowConfig:
    config = ShadowConfig(
        fraction=1.0,
        sink="redis",
        redis_url=url,
        stream_key="test:shadow",
        redis_timeout_s=0.5,
        breaker_failure_threshold=2,
        breaker_reset_timeout_s=0.2,
    )
    return replace(config, **changes)


def expected_record(request_id: str, user_id: str = "u1") -> ShadowRecord:
    metrics = agreement(
        CHAMPION.items,
        CHALLENGER.items,
        4,
        champion_scores=CHAMPION.scores,
        challenger_scores=CHALLENGER.scores,
    )
    return ShadowRecord(request_id, user_id, NOW, 4, CHAMPION, CHALLENGER, None, metrics)


async def poll(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# --- request path -------------------------------------------------------------------------


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


# --- sinks ----------------------------------------------------------------------------------


def test_records_land_in_jsonl_and_read_back_equal(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = jsonl_config(tmp_path)
        async with ShadowScorer(config, wall_clock=lambda: NOW) as scorer:
            for i in range(3):
                await scorer.submit(f"r{i}", "u1", CHAMPION, Challenger()())

    run(scenario())
    assert read_shadow_log(tmp_path / "s.jsonl") == [expected_record(f"r{i}") for i in range(3)]


def test_records_land_in_a_redis_stream_and_read_back_equal(redis_url: str) -> None:
    events = Events()

    async def scenario() -> None:
        config = redis_config(redis_url)
        async with ShadowScorer(config, on_event=events, wall_clock=lambda: NOW) as scorer:
            for i in range(3):
                await scorer.submit(f"r{i}", 1, CHAMPION, Challenger()())

    run(scenario())
    assert events.count("shadow_written", sink="redis") == 3
    assert read_shadow_log(redis_url, key="test:shadow") == [
        expected_record(f"r{i}", "1") for i in range(3)
    ]
    with redis.Redis.from_url(redis_url) as client:
        (_, fields), *_ = client.xrange("test:shadow", count=1)
        assert set(fields) == {b"data"}
        assert json.loads(fields[b"data"])["request_id"] == "r0"  # plain JSON, never pickle


def test_redis_stream_is_trimmed_approximately(redis_url: str) -> None:
    async def scenario() -> None:
        sink = RedisStreamSink(redis_url, "test:trim", maxlen=10)
        try:
            for i in range(600):
                await sink.write(expected_record(f"r{i}"))
        finally:
            await sink.aclose()

    run(scenario())
    with redis.Redis.from_url(redis_url) as client:
        assert 10 <= client.xlen("test:trim") < 600


def test_jsonl_is_safe_with_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    ids = [f"r{i}" for i in range(300)]

    async def scenario() -> None:
        sink = JsonlSink(path)
        big = replace(CHAMPION, items=list(range(2000)), scores=[0.5] * 2000)  # ~20 kB lines
        records = [replace(expected_record(rid), champion=big) for rid in ids]
        await asyncio.gather(*(sink.write(record) for record in records))
        await sink.aclose()

    run(scenario())
    records = read_shadow_log(path)
    assert sorted(r.request_id for r in records) == sorted(ids)


def test_jsonl_disk_error_is_counted_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.mkdir()  # writing to a directory fails like a broken disk would
    events = Events()

    async def scenario() -> None:
        async with ShadowScorer(jsonl_config(tmp_path), on_event=events) as scorer:
            await scorer.submit("r1", "u1", CHAMPION, Challenger()())
            await poll(lambda: scorer.counts.get("sink_error", 0) == 1)
            path.rmdir()
            await scorer.submit("r2", "u1", CHAMPION, Challenger()())
        assert scorer.counts["written"] == 1

    run(scenario())
    assert events.count("shadow_sink_error", sink="jsonl", reason="IsADirectoryError") == 1
    assert [r.request_id for r in read_shadow_log(path)] == ["r2"]


def test_redis_outage_is_counted_never_raised_and_recovers(
    redis_server: LocalRedis, redis_url: str
) -> None:
    events = Events()

    async def scenario() -> None:
        async with ShadowScorer(redis_config(redis_url), on_event=events) as scorer:
            await scorer.submit("before", "u1", CHAMPION, Challenger()())
            await poll(lambda: scorer.counts.get("written", 0) == 1)
            redis_server.stop()
            for i in range(4):
                await scorer.submit(f"down{i}", "u1", CHAMPION, Challenger()())
            await poll(lambda: scorer.counts.get("sink_error", 0) == 4)
            assert events.count("shadow_sink_error", sink="redis", reason="ConnectionError") == 2
            assert events.count("shadow_sink_error", sink="redis", reason="circuit_open") == 2
            assert events.count("breaker_state", state="open", breaker="shadow_sink") == 1

            redis_server.start()
            probes = itertools.count()

            async def probe() -> None:
                await scorer.submit(f"probe{next(probes)}", "u1", CHAMPION, Challenger()())
                await asyncio.sleep(0.05)

            while scorer.counts["written"] < 2:
                await probe()
                assert next(probes) < 400, "the sink did not recover"
            assert events.count("breaker_state", state="closed", breaker="shadow_sink") == 1
            await scorer.submit("after", "u1", CHAMPION, Challenger()())
        assert scorer.counts.get("worker_error", 0) == 0

    try:
        run(scenario())
    finally:
        redis_server.start()
    ids = [r.request_id for r in read_shadow_log(redis_url, key="test:shadow")]
    assert ids[-1] == "after"  # "before" went with the restart: the test server keeps no data
    assert not any(rid.startswith("down") for rid in ids)


# --- queue and challenger failures ----------------------------------------------------------


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


# --- sampling -------------------------------------------------------------------------------


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


# --- agreement math -------------------------------------------------------------------------


def test_agreement_identical_and_reversed() -> None:
    same = agreement([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], 5)
    assert same == {
        "k": 5,
        "shared": 5,
        "overlap_at_k": 1.0,
        "spearman": 1.0,
        "kendall": 1.0,
        "mean_score_delta": None,
    }
    flipped = agreement([1, 2, 3, 4, 5], [5, 4, 3, 2, 1], 5)
    assert (flipped["overlap_at_k"], flipped["spearman"], flipped["kendall"]) == (1.0, -1.0, -1.0)


def test_agreement_by_hand() -> None:
    # Shared 1,2,3; the challenger swaps 2 and 3: d = (0, 1, -1), rho = 1 - 6*2/(3*8) = 0.5;
    # pairs (1,2) and (1,3) concordant, (2,3) discordant: tau = (2 - 1) / 3.
    got = agreement([1, 2, 3], [1, 3, 2], 3)
    assert got["spearman"] == pytest.approx(0.5)
    assert got["kendall"] == pytest.approx(1 / 3)
    # Top-4 share 1 and 2 in opposite orders: half the list overlaps, the order is reversed.
    half = agreement([1, 2, 3, 4], [2, 1, 9, 8], 4)
    assert (half["shared"], half["overlap_at_k"], half["spearman"], half["kendall"]) == (
        2,
        0.5,
        -1.0,
        -1.0,
    )


def test_agreement_cuts_at_k_and_handles_small_cases() -> None:
    disjoint = agreement([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1], 3)
    assert disjoint["overlap_at_k"] == 0.0 and disjoint["spearman"] is None
    one = agreement([1, 2], [1, 7], 2)
    assert one["overlap_at_k"] == 0.5 and one["kendall"] is None
    assert agreement([], [], 5)["overlap_at_k"] is None
    assert agreement([1, 1, 2], [2, 1], 2)["overlap_at_k"] == 1.0  # duplicates count once
    assert agreement([1, 2], [1, 2, 3], 10)["overlap_at_k"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        agreement([1], [1], 0)


def test_mean_score_delta_on_shared_items() -> None:
    got = agreement(
        [1, 2, 3], [3, 1, 7], 3, champion_scores=[0.9, 0.8, 0.7], challenger_scores=[0.5, 0.4, 0.3]
    )
    # item 1: 0.4 - 0.9, item 3: 0.5 - 0.7
    assert got["mean_score_delta"] == pytest.approx(-0.35)


def test_rank_correlations_match_their_definitions() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        theirs = rng.permutation(12).tolist()
        got = agreement(list(range(12)), theirs, 12)
        ranks = np.argsort(theirs)  # challenger rank of item i
        assert got["spearman"] == pytest.approx(np.corrcoef(np.arange(12), ranks)[0, 1])
        pairs = list(itertools.combinations(range(12), 2))
        score = sum(np.sign(ranks[j] - ranks[i]) for i, j in pairs)
        assert got["kendall"] == pytest.approx(score / len(pairs))


# --- values ---------------------------------------------------------------------------------


def test_record_json_round_trip_and_rejects_garbage() -> None:
    record = expected_record("r1")
    assert ShadowRecord.from_json(record.to_json()) == record
    failed = ShadowRecord("r2", "u2", NOW, 4, CHAMPION, error="TimeoutError: slow")
    assert ShadowRecord.from_json(failed.to_json().encode()) == failed
    for garbage in ("[]", "{}", '{"format": 99}', "not json"):
        with pytest.raises(ValueError, match="not a shadow record"):
            ShadowRecord.from_json(garbage)
    with pytest.raises(ValueError, match="exactly one of challenger and error"):
        ShadowRecord("r3", "u3", NOW, 4, CHAMPION)


def test_read_shadow_log_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(expected_record("r1").to_json() + "\n{oops\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a shadow record"):
        read_shadow_log(path)


def test_scored_list_accepts_numpy_and_checks_shapes() -> None:
    from_numpy = ScoredList(
        {"ranker": "3"}, np.array([3, 1], dtype=np.int64), np.array([0.5, 0.25], dtype=np.float32)
    )
    assert from_numpy.items == (3, 1) and from_numpy.scores == (0.5, 0.25)
    assert type(from_numpy.items[0]) is int
    with pytest.raises(ValueError, match="2 items but 1 scores"):
        ScoredList({}, [1, 2], [0.1])
    with pytest.raises(ValueError, match="finite, got nan at position 1"):
        ScoredList({}, [1, 2], [0.1, float("nan")])
    with pytest.raises(ValueError, match="item ids must be int or str, got 1.5"):
        ScoredList({}, [1.5])


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


def test_jsonl_sink_needs_an_existing_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        JsonlSink(tmp_path / "missing" / "s.jsonl")


def test_submit_rejects_a_k_below_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        scorer = ShadowScorer(jsonl_config(tmp_path))
        with pytest.raises(ValueError, match="k must be >= 1, got 0"):
            await scorer.submit("r1", "u1", CHAMPION, Challenger()(), k=0)
        await scorer.aclose()

    run(scenario())
