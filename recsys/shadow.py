"""Shadow scoring: a sampled share of requests is re-scored by the challenger off the request path.

The request path only calls ``should_shadow`` and ``submit`` (a ``put_nowait`` onto a bounded
queue); background workers await the challenger with a timeout, compare its top-k with the
champion's and append a ``ShadowRecord`` to a JSONL file or a Redis stream. Nothing here raises
into the request path: drops, challenger failures and sink failures are counted and reported
through ``on_event``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from recsys.breaker import CircuitBreaker, CircuitOpenError
from recsys.cache import EventSink
from recsys.errors import RecsysError
from recsys.experiments import stable_unit

if TYPE_CHECKING:
    from typing_extensions import Self

RECORD_FORMAT = 1  # bump when the record layout changes; readers reject other formats
Item = int | str
Metrics = dict[str, float | int | None]
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_READ_PAGE = 1000


def _ignore(name: str, /, **labels: str) -> None:
    pass


@dataclass(frozen=True)
class ShadowConfig:
    """``fraction`` of request ids is shadowed, chosen by a salted hash of the request id.

    Hash sampling, not an RNG: every worker decides alike without shared state, a retried or
    replayed request makes the same choice, and tests are exact. Request ids are unique, so the
    sample is still uniform; the salt keeps it independent of the A/B user buckets.
    """

    fraction: float = 0.0
    salt: str = "shadow"
    max_queue: int = 1000
    workers: int = 1
    challenger_timeout_s: float = 1.0
    drain_timeout_s: float = 5.0
    sink: Literal["jsonl", "redis"] = "jsonl"
    jsonl_path: str | None = None
    redis_url: str | None = None
    stream_key: str = "recsys:shadow"
    stream_maxlen: int = 100_000  # trimmed approximately (XADD MAXLEN ~)
    redis_timeout_s: float = 0.1
    breaker_failure_threshold: int = 5
    breaker_reset_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {self.fraction}")
        for name in ("max_queue", "workers", "stream_maxlen", "breaker_failure_threshold"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "challenger_timeout_s",
            "drain_timeout_s",
            "redis_timeout_s",
            "breaker_reset_timeout_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.sink not in ("jsonl", "redis"):
            raise ValueError(f"sink must be 'jsonl' or 'redis', got {self.sink!r}")
        if self.sink == "jsonl" and not self.jsonl_path:
            raise ValueError("sink 'jsonl' needs jsonl_path, got none")
        if self.sink == "redis" and not (self.redis_url and self.stream_key):
            raise ValueError(
                f"sink 'redis' needs redis_url and stream_key, got {self.redis_url!r} "
                f"and {self.stream_key!r}"
            )


@dataclass(frozen=True)
class ScoredList:
    """One model's answer: item ids best first, their scores, model versions, latency in ms.

    ``scores`` is empty when the list was not scored (a fallback) or has one finite score per
    item. ``latency_ms=None`` on a challenger result means "measure it for me".
    """

    versions: Mapping[str, str]
    items: Sequence[Item]
    scores: Sequence[float] = ()
    latency_ms: float | None = None

    def __post_init__(self) -> None:
        versions = dict(self.versions)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in versions.items()):
            raise ValueError(f"versions must map str to str, got {versions!r}")
        items = tuple(_item(i) for i in _plain(self.items))
        scores = tuple(float(s) for s in _plain(self.scores))
        if scores and len(scores) != len(items):
            raise ValueError(f"got {len(items)} items but {len(scores)} scores (expected equal)")
        bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
        if bad:
            raise ValueError(f"scores must be finite, got {scores[bad[0]]} at position {bad[0]}")
        latency = self.latency_ms
        if latency is not None and not (math.isfinite(latency) and latency >= 0):
            raise ValueError(f"latency_ms must be a finite number >= 0 or None, got {latency}")
        object.__setattr__(self, "versions", versions)
        object.__setattr__(self, "items", items)
        object.__setattr__(self, "scores", scores)
        if latency is not None:
            object.__setattr__(self, "latency_ms", float(latency))

    def to_dict(self) -> dict[str, Any]:
        return {
            "versions": dict(self.versions),
            "items": list(self.items),
            "scores": list(self.scores),
            "latency_ms": self.latency_ms,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScoredList:
        return cls(data["versions"], data["items"], data["scores"], data["latency_ms"])


@dataclass(frozen=True)
class ShadowRecord:
    """One shadowed request. Exactly one of ``challenger`` and ``error`` is set; ``timestamp``
    is unix seconds at submit; ``agreement`` is ``agreement()``'s dict when the challenger
    answered."""

    request_id: str
    user_id: str
    timestamp: float
    k: int
    champion: ScoredList
    challenger: ScoredList | None = None
    error: str | None = None
    agreement: Metrics | None = None

    def __post_init__(self) -> None:
        if (self.challenger is None) == (self.error is None):
            raise ValueError(
                f"set exactly one of challenger and error, got {self.challenger!r} "
                f"and {self.error!r}"
            )
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")

    def to_json(self) -> str:
        document = {
            "format": RECORD_FORMAT,
            "request_id": self.request_id,
            "user_id": self.user_id,
            "timestamp": self.timestamp,
            "k": self.k,
            "champion": self.champion.to_dict(),
            "challenger": None if self.challenger is None else self.challenger.to_dict(),
            "error": self.error,
            "agreement": self.agreement,
        }
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> ShadowRecord:
        """Parse ``to_json`` output; ValueError (naming the problem) for anything else."""
        try:
            data = json.loads(text)
            if data["format"] != RECORD_FORMAT:
                raise ValueError(f"record format {data['format']!r}, expected {RECORD_FORMAT}")
            challenger = data["challenger"]
            return cls(
                request_id=data["request_id"],
                user_id=data["user_id"],
                timestamp=data["timestamp"],
                k=data["k"],
                champion=ScoredList.from_dict(data["champion"]),
                challenger=None if challenger is None else ScoredList.from_dict(challenger),
                error=data["error"],
                agreement=data["agreement"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a shadow record ({type(exc).__name__}: {exc})") from exc


def agreement(
    champion_items: Sequence[Item],
    challenger_items: Sequence[Item],
    k: int,
    *,
    champion_scores: Sequence[float] = (),
    challenger_scores: Sequence[float] = (),
) -> Metrics:
    """How far two ranked lists agree in their top ``k`` (duplicates count once, first place).

    ``overlap_at_k``: shared items / the longer of the two top-k lists (None if both empty).
    ``spearman``/``kendall``: rank correlation of the shared items' orders (None below 2).
    ``mean_score_delta``: mean challenger − champion score over shared items (None without
    scores or shared items). Also ``k`` and ``shared`` (count).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ours, theirs = _top_positions(champion_items, k), _top_positions(challenger_items, k)
    shared = [item for item in ours if item in theirs]  # in champion order
    longer = max(len(ours), len(theirs))
    spearman = kendall = delta = None
    if len(shared) >= 2:
        spearman, kendall = _rank_correlations(np.array([theirs[item] for item in shared]))
    if shared and len(champion_scores) and len(challenger_scores):
        ours_s = np.array([champion_scores[ours[item]] for item in shared], dtype=np.float64)
        theirs_s = np.array([challenger_scores[theirs[item]] for item in shared], dtype=np.float64)
        delta = float(np.mean(theirs_s - ours_s))
    return {
        "k": k,
        "shared": len(shared),
        "overlap_at_k": len(shared) / longer if longer else None,
        "spearman": spearman,
        "kendall": kendall,
        "mean_score_delta": delta,
    }


def _top_positions(items: Sequence[Item], k: int) -> dict[Item, int]:
    """First position of each of the first ``k`` distinct items."""
    positions: dict[Item, int] = {}
    for position, item in enumerate(_plain(items)):
        if len(positions) == k:
            break
        positions.setdefault(item, position)
    return positions


def _rank_correlations(other_positions: np.ndarray) -> tuple[float, float]:
    """(Spearman rho, Kendall tau) between 0..n-1 and the ranks of ``other_positions``.

    Positions are distinct, so there are no ties and tau-a equals tau-b.
    """
    n = len(other_positions)
    ours = np.arange(n)
    theirs = np.argsort(np.argsort(other_positions))
    spearman = 1.0 - 6.0 * float(np.sum((ours - theirs) ** 2)) / (n * (n * n - 1))
    upper = np.triu_indices(n, k=1)
    concordance = np.sign(ours[:, None] - ours[None, :]) * np.sign(theirs[:, None] - theirs)
    kendall = float(concordance[upper].sum()) / (n * (n - 1) / 2)
    return spearman, kendall


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
        emit = on_event or _ignore
        self.key, self.maxlen, self.timeout_s = key, maxlen, timeout_s
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),  # the breaker decides when to try again
        )
        self.breaker = CircuitBreaker(
            breaker_failure_threshold,
            breaker_reset_timeout_s,
            failure_types=(RedisError, OSError, asyncio.TimeoutError),
            on_state_change=lambda old, new: emit(
                "breaker_state", state=new, previous=old, breaker="shadow_sink"
            ),
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


def make_sink(config: ShadowConfig, *, on_event: EventSink | None = None) -> ShadowSink:
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


@dataclass(frozen=True, slots=True)
class _Job:
    request_id: str
    user_id: str
    timestamp: float
    k: int
    champion: ScoredList
    challenger_call: Callable[[], Awaitable[ScoredList]]


class ShadowScorer:
    """Runs challenger calls for sampled requests in background workers and logs the outcome.

    ``on_event`` receives ``shadow_dropped(reason)`` (queue_full, closed, shutdown),
    ``shadow_scored(overlap, spearman, kendall, mean_score_delta, challenger_ms)`` (overlap is
    overlap@k; numbers as decimal strings, undefined ones left out: observe them, never use them
    as metric labels), ``shadow_challenger_error(reason, error)`` (timeout or exception),
    ``shadow_sink_error(sink, reason)``, ``shadow_written(sink)``, ``shadow_worker_error(error)``
    and, from a Redis sink, ``breaker_state(state, previous, breaker="shadow_sink")``.
    Use from one event loop. The scorer owns ``sink`` and closes it in ``aclose``.
    """

    def __init__(
        self,
        config: ShadowConfig,
        *,
        sink: ShadowSink | None = None,
        on_event: EventSink | None = None,
        clock: Callable[[], float] = time.perf_counter,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._emit = on_event or _ignore
        self.sink = sink if sink is not None else make_sink(config, on_event=self._emit)
        self._clock, self._wall_clock = clock, wall_clock
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(config.max_queue)
        self._workers: list[asyncio.Task[None]] = []
        self._busy = 0
        self._closed = False
        self._counts: Counter[str] = Counter()

    @property
    def counts(self) -> dict[str, int]:
        """Totals so far: submitted, dropped, scored, challenger_error, written, sink_error."""
        return dict(self._counts)

    def should_shadow(self, request_id: str) -> bool:
        """Whether this request is in the shadow sample (the same answer in every worker)."""
        fraction = self.config.fraction
        return fraction > 0 and stable_unit(self.config.salt, request_id) < fraction

    async def submit(
        self,
        request_id: str,
        user_id: str | int,
        champion_result: ScoredList,
        challenger_call: Callable[[], Awaitable[ScoredList]],
        *,
        k: int | None = None,
    ) -> bool:
        """Queue a shadow comparison and return at once (True if queued, False if dropped).

        Does not sample (ask ``should_shadow`` first) and never calls ``challenger_call`` here;
        ``k`` defaults to the champion's list length (ValueError if below 1: a caller bug).
        """
        if k is not None and k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if self._closed:
            self._drop("closed")
            return False
        job = _Job(
            request_id=str(request_id),
            user_id=str(user_id),
            timestamp=self._wall_clock(),
            k=k if k is not None else max(len(champion_result.items), 1),
            champion=champion_result,
            challenger_call=challenger_call,
        )
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self._drop("queue_full")
            return False
        self._counts["submitted"] += 1
        return True

    def start(self) -> None:
        """Start the workers; call from inside the running event loop (idempotent)."""
        if self._closed:
            raise RuntimeError("ShadowScorer is closed; create a new one")
        if not self._workers:
            loop = asyncio.get_running_loop()
            self._workers = [
                loop.create_task(self._work(), name=f"shadow-worker-{n}")
                for n in range(self.config.workers)
            ]

    async def aclose(self) -> None:
        """Stop accepting, let the workers drain the queue for up to ``drain_timeout_s``, then
        cancel them (what is left counts as dropped, reason ``shutdown``) and close the sink."""
        if self._closed:
            return
        self._closed = True
        if self._workers:
            try:
                await asyncio.wait_for(self._queue.join(), self.config.drain_timeout_s)
            except asyncio.TimeoutError:
                pass
        abandoned = self._busy + self._queue.qsize()
        workers, self._workers = self._workers, []
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for _ in range(abandoned):
            self._drop("shutdown")
        await self.sink.aclose()

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            self._busy += 1
            try:
                await self._process(job)
            # A bug in this module must not stop shadowing for good: count it and go on.
            except Exception as exc:  # noqa: BLE001
                self._count("worker_error", "shadow_worker_error", error=type(exc).__name__)
            finally:
                self._busy -= 1
                self._queue.task_done()

    async def _process(self, job: _Job) -> None:
        challenger, error = await self._call_challenger(job)
        metrics = None
        if challenger is not None:
            metrics = agreement(
                job.champion.items,
                challenger.items,
                job.k,
                champion_scores=job.champion.scores,
                challenger_scores=challenger.scores,
            )
            numbers = {
                "overlap": metrics["overlap_at_k"],
                "spearman": metrics["spearman"],
                "kendall": metrics["kendall"],
                "mean_score_delta": metrics["mean_score_delta"],
                "challenger_ms": challenger.latency_ms,
            }
            labels = {name: repr(float(v)) for name, v in numbers.items() if v is not None}
            self._count("scored", "shadow_scored", **labels)
        record = ShadowRecord(
            job.request_id,
            job.user_id,
            job.timestamp,
            job.k,
            job.champion,
            challenger,
            error,
            metrics,
        )
        try:
            await self.sink.write(record)
        except ShadowSinkError as exc:
            self._count("sink_error", "shadow_sink_error", sink=exc.sink, reason=exc.reason)
        else:
            self._count("written", "shadow_written", sink=self.sink.name)

    async def _call_challenger(self, job: _Job) -> tuple[ScoredList | None, str | None]:
        timeout_s = self.config.challenger_timeout_s
        started = self._clock()
        try:
            result = await asyncio.wait_for(job.challenger_call(), timeout_s)
        except asyncio.TimeoutError:
            self._count(
                "challenger_error",
                "shadow_challenger_error",
                reason="timeout",
                error="TimeoutError",
            )
            return None, f"TimeoutError: no challenger result within {timeout_s}s"
        # The challenger is the model under evaluation: whatever it raises is a result to log.
        except Exception as exc:  # noqa: BLE001
            self._count(
                "challenger_error",
                "shadow_challenger_error",
                reason="exception",
                error=type(exc).__name__,
            )
            return None, f"{type(exc).__name__}: {exc}"
        if not isinstance(result, ScoredList):
            self._count(
                "challenger_error", "shadow_challenger_error", reason="exception", error="TypeError"
            )
            return None, f"TypeError: challenger returned {type(result).__name__}, not ScoredList"
        if result.latency_ms is None:
            result = replace(result, latency_ms=(self._clock() - started) * 1000.0)
        return result, None

    def _drop(self, reason: str) -> None:
        self._count("dropped", "shadow_dropped", reason=reason)

    def _count(self, counter: str, event: str, **labels: str) -> None:
        self._counts[counter] += 1
        self._emit(event, **labels)


def _plain(values: Any) -> list[Any]:
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def _item(value: Any) -> Item:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return value
    raise ValueError(f"item ids must be int or str, got {value!r}")
