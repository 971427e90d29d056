"""Two-level result cache on a real redis-server: levels, TTLs, keys, single-flight, outages."""
from __future__ import annotations

import asyncio
import pickle
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import redis

from devtools.local_redis import LocalRedis, ping
from recsys.errors import StoreError
from recsys.stores.cache import ResultCache
from recsys.stores.cache_config import CacheConfig
from recsys.stores.cache_keys import make_key
from recsys.stores.codec import UndecodableValue, decode_value, encode_value
from tests.support.events import Events

CONFIG = CacheConfig(
    l1_ttl_s={"results": 5.0, "user_vector": 50.0},
    l2_ttl_s={"results": 60.0, "user_vector": 600.0},
    redis_timeout_s=0.5,  # generous: these tests are about behaviour, not latency
    breaker_failure_threshold=2,
    breaker_reset_timeout_s=0.2,
    generation_ttl_s=3600.0,
    key_prefix="test:",
)
VERSIONS = {"retriever": "7", "ranker": "3"}
UNPICKLED: list[str] = []


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Compute:
    """An async compute function that counts its calls; optionally slow or failing."""

    def __init__(
        self, value: Any = "computed", delay_s: float = 0.0, error: Exception | None = None
    ) -> None:
        self.value, self.delay_s, self.error, self.calls = value, delay_s, error, 0

    async def __call__(self) -> Any:
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return self.value


class Boom(Exception):
    pass


def _mark_unpickled() -> str:
    UNPICKLED.append("unpickled")
    return "pwned"


class Exploit:
    def __reduce__(self) -> tuple[Callable[[], str], tuple[()]]:
        return _mark_unpickled, ()


def key(request_id: str = "r1", kind: str = "results") -> str:
    return make_key(kind, VERSIONS, {"user_id": "u1", "request": request_id})


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(scenario)


def test_miss_then_l1_then_l2_after_l1_expiry(redis_url: str) -> None:
    value = {"items": ["a", "b"], "scores": [0.5, 0.25], "vector": np.arange(4, dtype=np.float32)}

    async def scenario() -> None:
        clock = FakeClock()
        async with ResultCache(CONFIG, redis_url, clock=clock) as cache:
            compute = Compute(value)
            assert (await cache.get_or_compute("results", key(), compute))[1] == "miss"
            assert (await cache.get_or_compute("results", key(), compute))[1] == "l1"
            clock.now += 5.1
            got, level = await cache.get_or_compute("results", key(), compute)
            assert level == "l2" and compute.calls == 1
            assert got["items"] == ["a", "b"] and got["scores"] == [0.5, 0.25]
            assert got["vector"].dtype == np.float32 and not got["vector"].flags.writeable
            np.testing.assert_array_equal(got["vector"], value["vector"])
            assert (await cache.get_or_compute("results", key(), compute))[1] == "l1"

    run(scenario())


def test_another_worker_reads_l2(redis_url: str) -> None:
    async def scenario() -> None:
        async with ResultCache(CONFIG, redis_url) as a, ResultCache(CONFIG, redis_url) as b:
            await a.get_or_compute("results", key(), Compute([1, 2, 3]))
            await a.flush()
            compute_b = Compute("must not run")
            assert await b.get_or_compute("results", key(), compute_b) == ([1, 2, 3], "l2")
            assert compute_b.calls == 0
            other = key("another request")
            assert await b.get_or_compute("results", other, Compute("fresh")) == ("fresh", "miss")

    run(scenario())


def test_a_miss_returns_before_its_l2_write_lands(redis_url: str) -> None:
    async def scenario() -> None:
        async with ResultCache(CONFIG, redis_url) as a, ResultCache(CONFIG, redis_url) as b:
            with redis.Redis.from_url(redis_url) as admin:
                admin.execute_command("CLIENT", "PAUSE", "300", "WRITE")  # reads still answer
            started = time.monotonic()
            assert await a.get_or_compute("results", key(), Compute("v")) == ("v", "miss")
            assert time.monotonic() - started < 0.2  # not held by the paused write
            assert await a.get_or_compute("results", key(), Compute()) == ("v", "l1")
            await a.flush()  # the write lands once Redis takes writes again
            assert await b.get_or_compute("results", key(), Compute()) == ("v", "l2")

    run(scenario())


def test_ttl_per_kind(redis_url: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        async with ResultCache(CONFIG, redis_url, clock=clock) as cache:
            vector = np.ones(8, dtype=np.float32)
            await cache.get_or_compute("results", key(), Compute(["x"]))
            await cache.get_or_compute("user_vector", key(kind="user_vector"), Compute(vector))
            clock.now += 6.0  # past the results L1 TTL (5 s), within user_vector's (50 s)
            assert (await cache.get_or_compute("results", key(), Compute()))[1] == "l2"
            vector_key = key(kind="user_vector")
            assert (await cache.get_or_compute("user_vector", vector_key, Compute()))[1] == "l1"

    run(scenario())
    with redis.Redis.from_url(redis_url) as client:
        assert 59_000 < client.pttl(f"test:{key()}") <= 60_000
        assert 599_000 < client.pttl(f"test:{key(kind='user_vector')}") <= 600_000


def test_a_value_may_shorten_its_own_ttl_in_both_levels(redis_url: str) -> None:
    def ttl(value: dict[str, Any]) -> float | None:
        return 2.0 if value["degraded"] else None

    async def scenario() -> None:
        clock = FakeClock()
        async with ResultCache(CONFIG, redis_url, clock=clock) as cache:
            degraded, healthy = Compute({"degraded": True}), Compute({"degraded": False})
            for compute, request in ((degraded, "d"), (healthy, "h")):
                await cache.get_or_compute("results", key(request), compute, ttl_s=ttl)
            clock.now += 2.1  # past the degraded value's 2 s, within the kind's 5 s
            assert (await cache.get_or_compute("results", key("h"), healthy, ttl_s=ttl))[1] == "l1"
            assert (await cache.get_or_compute("results", key("d"), degraded, ttl_s=ttl))[1] == "l2"
            clock.now += 2.1  # the value read back from L2 keeps its own cap in L1 too
            assert (await cache.get_or_compute("results", key("d"), degraded, ttl_s=ttl))[1] == "l2"

    run(scenario())
    with redis.Redis.from_url(redis_url) as client:
        assert 0 < client.pttl(f"test:{key('d')}") <= 2_000
        assert 59_000 < client.pttl(f"test:{key('h')}") <= 60_000


def test_a_ttl_of_zero_keeps_a_value_out_of_both_levels(redis_url: str) -> None:
    async def scenario() -> None:
        async with ResultCache(CONFIG, redis_url) as cache:
            compute = Compute("do not keep")
            for _ in range(2):
                got = await cache.get_or_compute("results", key(), compute, ttl_s=lambda v: 0.0)
                assert got == ("do not keep", "miss")
            assert compute.calls == 2

    run(scenario())
    with redis.Redis.from_url(redis_url) as client:
        assert not client.exists(f"test:{key()}")


def test_promotion_never_serves_the_old_models_result(redis_url: str) -> None:
    async def scenario() -> None:
        async with ResultCache(CONFIG, redis_url) as cache:
            request = {"user_id": "u1"}
            old = make_key("results", {"ranker": "3"}, request)
            new = make_key("results", {"ranker": "4"}, request)
            await cache.get_or_compute("results", old, Compute("from ranker 3"))
            assert await cache.get_or_compute("results", new, Compute("from ranker 4")) == (
                "from ranker 4",
                "miss",
            )

    run(scenario())


def test_bump_user_generation_invalidates_l1_and_l2(redis_url: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        async with (
            ResultCache(CONFIG, redis_url, clock=clock) as a,
            ResultCache(CONFIG, redis_url, clock=clock) as b,
        ):
            k = key()
            await a.get_or_compute("results", k, Compute("before"), user_id="u1")
            assert await b.get_or_compute("results", k, Compute(), user_id="u1") == ("before", "l2")
            assert await a.bump_user_generation("u1") == 1
            compute = Compute("after")
            assert await a.get_or_compute("results", k, compute, user_id="u1") == ("after", "miss")
            assert await a.get_or_compute("results", k, compute, user_id="u1") == ("after", "l1")
            # Worker b learns of the bump when its L1 entry expires (bounded staleness).
            assert await b.get_or_compute("results", k, Compute(), user_id="u1") == ("before", "l1")
            clock.now += 5.1
            assert await b.get_or_compute("results", k, Compute(), user_id="u1") == ("after", "l2")
            # A different user's entries are untouched.
            await a.get_or_compute("results", k, Compute("u2"), user_id="u2")
            await a.bump_user_generation("u1")
            assert (await a.get_or_compute("results", k, Compute(), user_id="u2"))[1] == "l1"

    run(scenario())


def test_single_flight_computes_once_for_a_burst(redis_url: str) -> None:
    async def scenario() -> None:
        events = Events()
        async with ResultCache(CONFIG, redis_url, on_event=events) as cache:
            compute = Compute(["shared"], delay_s=0.05)
            results = await asyncio.gather(
                *(cache.get_or_compute("results", key(), compute) for _ in range(50))
            )
            assert compute.calls == 1
            assert all(r == (["shared"], "miss") for r in results)
            assert events.count("coalesced", kind="results") == 49
            assert events.count("lookup", kind="results", level="miss") == 50

    run(scenario())


def test_compute_error_reaches_every_waiter_and_is_not_cached(redis_url: str) -> None:
    async def scenario() -> None:
        async with ResultCache(CONFIG, redis_url) as cache:
            failing = Compute(delay_s=0.05, error=Boom("ranker down"))
            results = await asyncio.gather(
                *(cache.get_or_compute("results", key(), failing) for _ in range(10)),
                return_exceptions=True,
            )
            assert failing.calls == 1
            assert all(isinstance(r, Boom) for r in results)
            with redis.Redis.from_url(redis_url) as client:
                assert client.exists(f"test:{key()}") == 0
            assert await cache.get_or_compute("results", key(), Compute("ok")) == ("ok", "miss")

    run(scenario())


def _garbage_payloads() -> list[bytes]:
    good = encode_value({"v": np.ones(4, dtype=np.float32)}, None)
    return [
        pickle.dumps(Exploit()),
        b"\x00not a cache value",
        good[:4] + b"\xff\xff\xff\x7f{}",  # right magic, length past the end
        good[:-4],  # array bytes truncated
        good.replace(b"<f4", b"|O8"),  # object dtype: refused
    ]


@pytest.mark.parametrize("payload", _garbage_payloads())
def test_undecodable_redis_value_is_a_counted_miss_and_never_unpickled(
    redis_url: str, payload: bytes
) -> None:
    with pytest.raises(UndecodableValue):
        decode_value(payload)
    with redis.Redis.from_url(redis_url) as client:
        client.set(f"test:{key()}", payload)

    async def scenario() -> None:
        events = Events()
        async with ResultCache(CONFIG, redis_url, on_event=events) as cache:
            got = await cache.get_or_compute("results", key(), Compute("fresh"))
            assert got == ("fresh", "miss")
            assert events.count("decode_error", kind="results") == 1
        async with ResultCache(CONFIG, redis_url) as other:  # the bad value was overwritten
            assert await other.get_or_compute("results", key(), Compute()) == ("fresh", "l2")

    run(scenario())
    assert UNPICKLED == []


def test_garbage_generation_counter_is_a_miss(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        client.set("test:generation:u1", b"not a number")

    async def scenario() -> None:
        async with ResultCache(CONFIG, redis_url) as cache:
            got = await cache.get_or_compute("results", key(), Compute("fresh"), user_id="u1")
            assert got == ("fresh", "miss")

    run(scenario())


async def _poll(condition: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def test_redis_outage_serves_computed_values_and_recovers(
    redis_server: LocalRedis, redis_url: str
) -> None:
    async def scenario() -> None:
        events = Events()
        async with ResultCache(CONFIG, redis_url, on_event=events) as cache:
            await cache.get_or_compute("results", key("cached"), Compute("cached"))
            await cache.flush()  # its L2 write lands before the outage
            redis_server.stop()
            for i in range(5):
                got = await cache.get_or_compute("results", key(f"down {i}"), Compute(i))
                assert got == (i, "miss")
            assert cache.breaker.state == "open"
            assert events.count("breaker_state", state="open") == 1
            assert events.count("redis_error", op="read") == 2  # then the breaker stops trying
            assert events.count("redis_skipped", op="read") == 3
            got = await cache.get_or_compute("results", key("cached"), Compute())
            assert got == ("cached", "l1")
            with pytest.raises(StoreError, match="generation"):
                await cache.bump_user_generation("u1")

            redis_server.start()
            probes = iter(range(10_000))

            async def l2_back() -> bool:
                await cache.get_or_compute("results", key(f"probe {next(probes)}"), Compute())
                return cache.breaker.state == "closed"

            await _poll(l2_back)
            assert events.count("breaker_state", state="closed") == 1
            await cache.get_or_compute("results", key("after"), Compute("after"))
        async with ResultCache(CONFIG, redis_url) as other:
            assert await other.get_or_compute("results", key("after"), Compute()) == ("after", "l2")

    try:
        run(scenario())
    finally:
        redis_server.start()


def test_slow_redis_times_out_and_is_served_without_l2(
    redis_server: LocalRedis, redis_url: str
) -> None:
    config = replace(CONFIG, redis_timeout_s=0.1, breaker_failure_threshold=5)

    async def scenario() -> None:
        events = Events()
        async with ResultCache(config, redis_url) as a:
            await a.get_or_compute("results", key(), Compute("in l2"))
        async with ResultCache(config, redis_url, on_event=events) as b:
            with redis.Redis.from_url(redis_url) as admin:
                admin.execute_command("CLIENT", "PAUSE", "1000", "ALL")
            started = time.monotonic()
            assert await b.get_or_compute("results", key(), Compute("computed")) == (
                "computed",
                "miss",
            )
            assert time.monotonic() - started < 0.8  # bounded by the timeout, not the pause
            assert events.count("redis_error", op="read", error="TimeoutError") == 1
            assert b.breaker.state == "closed"

            async def answers() -> bool:
                return ping(redis_server.port)

            await _poll(answers)
            got = await b.get_or_compute("results", key("later"), Compute("later"))
            assert got == ("later", "miss")
        async with ResultCache(config, redis_url) as c:
            assert await c.get_or_compute("results", key("later"), Compute()) == ("later", "l2")

    run(scenario())


def test_without_redis_l1_still_works() -> None:
    async def scenario() -> None:
        async with ResultCache(CONFIG, None) as cache:
            assert await cache.get_or_compute("results", key(), Compute("v"), user_id="u1") == (
                "v",
                "miss",
            )
            got = await cache.get_or_compute("results", key(), Compute(), user_id="u1")
            assert got == ("v", "l1")
            assert await cache.bump_user_generation("u1") is None
            got = await cache.get_or_compute("results", key(), Compute("w"), user_id="u1")
            assert got == ("w", "miss")

    run(scenario())


def test_unknown_kind_and_unencodable_value_are_errors(redis_url: str) -> None:
    async def scenario() -> None:
        async with ResultCache(CONFIG, redis_url) as cache:
            with pytest.raises(ValueError, match="unknown cache kind 'nope'"):
                await cache.get_or_compute("nope", key(), Compute())
            with pytest.raises(TypeError, match="cannot cache a set"):
                await cache.get_or_compute("results", key(), Compute({"a": {1, 2}}))

    run(scenario())
