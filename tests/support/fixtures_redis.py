"""Pytest plugin: a real redis-server for the session, flushed before each test that asks for it."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from devtools.local_redis import LocalRedis, LocalRedisError, find_redis_server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    """A redis-server on a free 127.0.0.1 port; ``stop()``/``start()`` keep the port."""
    try:
        executable = find_redis_server()
    except LocalRedisError as exc:
        pytest.skip(str(exc))
    server = LocalRedis(tmp_path_factory.mktemp("redis"), executable=executable)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: LocalRedis) -> str:
    """URL of the session server, running (restarted if a test stopped it) and empty."""
    redis_server.start()  # no-op when running; a failed test may have left it stopped
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url
