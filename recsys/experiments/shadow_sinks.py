"""Shadow sinks: where shadow records are written (JSONL file, Redis stream) and read back."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, Protocol

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from recsys.breaker import CircuitBreaker, CircuitOpenError
from recsys.errors import RecsysError
from recsys.experiments.shadow_records import ShadowRecord
from recsys.stores.redis_connection import ONE_ROUND_TRIP
from recsys.telemetry import BreakerStateEvents, EventSink, ignore_event

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_READ_PAGE = 1000


class ShadowSinkError(RecsysError):
    """A shadow record could not be written; ``reason`` is short and fit for a metric label."""

    def __init__(self, sink: str, reason: str, detail: str) -> None:
        super().__init__(f"shadow sink {sink!r} failed ({reason}): {detail}")
        self.sink, self.reason = sink, reason


class ShadowSink(Protocol):
    name: str

    async def write(self, record: ShadowRecord) -> None:
        """Store one record or raise ShadowSinkError."""

    async def aclose(self) -> None: ...


class JsonlSink:
    """Appends one JSON record per line. Each line is one ``write(2)`` on an ``O_APPEND`` file
    under a lock, so concurrent writers in a process never interleave; the write happens in a
    thread so a slow disk does not stall the event loop. Survives a process crash, not a power
    cut (no fsync)."""

    name = "jsonl"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise ValueError(f"shadow log directory {self.path.parent} does not exist")
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._torn = False  # the last write stopped mid-line: start the next one on a new line

    async def write(self, record: ShadowRecord) -> None:
        line = (record.to_json() + "\n").encode()
        try:
            await asyncio.to_thread(self._append, line)
        except OSError as exc:
            raise ShadowSinkError(self.name, type(exc).__name__, str(exc)) from exc

    async def aclose(self) -> None:
        with self._lock:
            self._close_fd()

    def _append(self, line: bytes) -> None:
        with self._lock:
            try:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                data = b"\n" + line if self._torn else line
                self._torn = False
                while data:
                    written = os.write(self._fd, data)
                    self._torn = True
                    data = data[written:]
                self._torn = False
            except OSError:
                self._close_fd()  # reopen on the next write: the disk may have come back
                raise

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class RedisStreamSink:
    """XADD to ``key`` with one ``data`` field holding the record's JSON (never pickle), trimmed
    with ``MAXLEN ~ maxlen``. Every call has a timeout and goes through a circuit breaker."""

    name = "redis"

    def __init__(
        self,
        url: str,
        key: str,
        maxlen: int,
        *,
        timeout_s: float = 0.1,
        breaker_failure_threshold: int = 5,
        breaker_reset_timeout_s: float = 5.0,
        on_event: EventSink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        emit = on_event or ignore_event
        self.key, self.maxlen, self.timeout_s = key, maxlen, timeout_s
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),  # the breaker decides when to try again
            **ONE_ROUND_TRIP,
        )
        self.breaker = CircuitBreaker(
            breaker_failure_threshold,
            breaker_reset_timeout_s,
            failure_types=(RedisError, OSError, asyncio.TimeoutError),
            on_state_change=BreakerStateEvents(emit, "shadow_sink"),
            clock=clock,
        )

    async def write(self, record: ShadowRecord) -> None:
        fields: dict[Any, Any] = {"data": record.to_json()}

        def xadd() -> Awaitable[Any]:
            command = self._redis.xadd(self.key, fields, maxlen=self.maxlen, approximate=True)
            return asyncio.wait_for(command, self.timeout_s)

        try:
            await self.breaker.call(xadd)
        except CircuitOpenError as exc:
            raise ShadowSinkError(self.name, "circuit_open", str(exc)) from exc
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise ShadowSinkError(self.name, type(exc).__name__, str(exc)) from exc

    async def aclose(self) -> None:
        await self._redis.aclose()


class SinkSettings(Protocol):
    """What ``make_sink`` reads from a ``ShadowConfig`` (read-only, as on the frozen config)."""

    @property
    def sink(self) -> Literal["jsonl", "redis"]: ...
    @property
    def jsonl_path(self) -> str | None: ...
    @property
    def redis_url(self) -> str | None: ...
    @property
    def stream_key(self) -> str: ...
    @property
    def stream_maxlen(self) -> int: ...
    @property
    def redis_timeout_s(self) -> float: ...
    @property
    def breaker_failure_threshold(self) -> int: ...
    @property
    def breaker_reset_timeout_s(self) -> float: ...


def make_sink(config: SinkSettings, *, on_event: EventSink | None = None) -> ShadowSink:
    if config.sink == "redis":
        assert config.redis_url is not None  # checked by ShadowConfig
        return RedisStreamSink(
            config.redis_url,
            config.stream_key,
            config.stream_maxlen,
            timeout_s=config.redis_timeout_s,
            breaker_failure_threshold=config.breaker_failure_threshold,
            breaker_reset_timeout_s=config.breaker_reset_timeout_s,
            on_event=on_event,
        )
    assert config.jsonl_path is not None  # checked by ShadowConfig
    return JsonlSink(config.jsonl_path)


def read_shadow_log(source: str | os.PathLike[str], key: str | None = None) -> list[ShadowRecord]:
    """Every record in a JSONL file, or in stream ``key`` of a ``redis://`` URL, oldest first.

    For notebooks (blocking I/O). ValueError names the line or stream entry that does not parse.
    """
    location = os.fspath(source)
    if location.startswith(_REDIS_SCHEMES):
        if key is None:
            raise ValueError(f"reading shadow records from {location} needs the stream key")
        return _read_stream(location, key)
    records = []
    with open(location, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                records.append(_parse_record(line, f"{location}:{number}"))
    return records


def _read_stream(url: str, key: str) -> list[ShadowRecord]:
    records, start = [], "-"
    with redis.Redis.from_url(url) as client:
        while entries := client.xrange(key, min=start, max="+", count=_READ_PAGE):
            for entry_id, fields in entries:
                where = f"{key} entry {entry_id.decode()}"
                if b"data" not in fields:
                    raise ValueError(f"{where} has no 'data' field: {sorted(fields)}")
                records.append(_parse_record(fields[b"data"], where))
            start = "(" + entries[-1][0].decode()  # exclusive range: Redis >= 6.2
    return records


def _parse_record(text: str | bytes, where: str) -> ShadowRecord:
    try:
        return ShadowRecord.from_json(text)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
