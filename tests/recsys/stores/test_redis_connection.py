"""The request path's Redis clients get through a slow link on a fresh connection: one round trip
per call, setting the connection up included (recsys/stores/redis_connection.py).

Found by the chaos suite (benchmarks/chaos.py, redis-latency fault): with redis-py 8's defaults a
fresh connection spent four round trips before its first command, so once a call timed out and
dropped its connection, a Redis slowed to a round trip of a quarter of the timeout refused every
later call until the latency went away. Each store below is new, so each first call connects.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace

import pytest

from devtools.latency_proxy import LatencyProxy
from recsys.breaker import CircuitBreaker
from recsys.stores.cache import ResultCache
from recsys.stores.history import HistoryStore
from tests.recsys.stores.test_cache import CONFIG

TIMEOUT_S = 0.1
# Each way: a 30 ms round trip, under a third of the timeout; the four round trips of redis-py's
# default connection set-up took 120 ms and more.
DELAY_MS = 15.0
CALLS = 3


@pytest.fixture
def slow_url(redis_url: str) -> Iterator[str]:
    """redis_url's server behind a proxy that delays every byte by DELAY_MS each way."""
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = LatencyProxy(port)
    proxy.set_delay_ms(DELAY_MS)
    try:
        yield f"redis://127.0.0.1:{proxy.port}/0"
    finally:
        proxy.stop()


def test_history_store_connects_and_answers_within_one_round_trip(slow_url: str) -> None:
    async def calls() -> list[str]:
        for n in range(CALLS):
            store = HistoryStore(slow_url, 10, TIMEOUT_S, CircuitBreaker(1, 60.0),
                                 prefix="test:slow:")
            try:
                await store.append("u1", f"i{n}", "click", 1000.0 + n)  # raises StoreError
            finally:
                await store.aclose()
        store = HistoryStore(slow_url, 10, TIMEOUT_S, CircuitBreaker(1, 60.0), prefix="test:slow:")
        try:
            return await store.recent_items("u1", 10)
        finally:
            await store.aclose()

    assert asyncio.run(calls()) == ["i0", "i1", "i2"]


def test_result_cache_connects_and_answers_within_one_round_trip(slow_url: str) -> None:
    config = replace(CONFIG, redis_timeout_s=TIMEOUT_S, breaker_failure_threshold=1)

    async def bumps() -> list[int | None]:
        out = []
        for _ in range(CALLS):
            cache = ResultCache(config, slow_url)
            try:
                out.append(await cache.bump_user_generation("u1"))  # raises StoreError
            finally:
                await cache.aclose()
        return out

    assert asyncio.run(bumps()) == [1, 2, 3]
