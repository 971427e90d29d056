"""The chaos suite's latency proxy in front of a real Redis: passes traffic, delays it when told,
and closes its clients' connections when the server behind it is gone."""
from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from devtools.latency_proxy import LatencyProxy
from devtools.local_redis import LocalRedis


@pytest.fixture
def proxy(redis_server: LocalRedis, redis_url: str) -> Iterator[LatencyProxy]:
    proxy = LatencyProxy(redis_server.port)
    try:
        yield proxy
    finally:
        proxy.stop()


def round_trip_s(client: redis.Redis) -> float:
    start = time.perf_counter()
    client.ping()
    return time.perf_counter() - start


def test_traffic_passes_and_the_delay_applies_each_way(proxy: LatencyProxy) -> None:
    with redis.Redis(port=proxy.port) as client:
        assert client.set("k", "v") and client.get("k") == b"v"
        fast = min(round_trip_s(client) for _ in range(5))
        proxy.set_delay_ms(40)
        slow = min(round_trip_s(client) for _ in range(3))
        proxy.set_delay_ms(0)
        again = min(round_trip_s(client) for _ in range(5))

    assert slow >= 0.08 > fast and again < 0.04


def test_clients_see_their_connection_closed_when_redis_is_gone(
        proxy: LatencyProxy, redis_server: LocalRedis) -> None:
    with redis.Redis(port=proxy.port, socket_timeout=2) as client:
        client.ping()
        redis_server.stop()
        try:
            with pytest.raises(redis.ConnectionError):
                client.ping()
        finally:
            redis_server.start()
        assert client.ping()  # a new connection through the proxy reaches the new server
