"""Shadow sinks on a real JSONL file and a real redis-server: written, read back, robust to outages."""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from devtools.local_redis import LocalRedis
from recsys.experiments.shadow import ShadowScorer
from recsys.experiments.shadow_sinks import JsonlSink, RedisStreamSink, read_shadow_log
from tests.support.events import Events
from tests.support.shadow import (
    CHAMPION,
    NOW,
    Challenger,
    expected_record,
    jsonl_config,
    poll,
    redis_config,
    run,
)


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


def test_read_shadow_log_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(expected_record("r1").to_json() + "\n{oops\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a shadow record"):
        read_shadow_log(path)


def test_jsonl_sink_needs_an_existing_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        JsonlSink(tmp_path / "missing" / "s.jsonl")
