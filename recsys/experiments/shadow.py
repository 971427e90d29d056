"""Shadow scoring: a sampled share of requests is re-scored by the challenger off the request path.

The request path only calls ``should_shadow`` and ``submit`` (a ``put_nowait`` onto a bounded
queue); background workers await the challenger with a timeout, compare its top-k with the
champion's and append a ``ShadowRecord`` to a JSONL file or a Redis stream. Nothing here raises
into the request path: drops, challenger failures and sink failures are counted and reported
through ``on_event``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from recsys.experiments.routing import stable_unit
from recsys.experiments.shadow_records import ScoredList, ShadowRecord, agreement
from recsys.experiments.shadow_sinks import ShadowSink, ShadowSinkError, make_sink
from recsys.telemetry import EventSink, ignore_event

if TYPE_CHECKING:
    from typing_extensions import Self


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
        self._emit = on_event or ignore_event
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
