"""Async circuit breaker (closed → open → half-open) that stops calling a failing dependency.

Why not pybreaker: its ``call`` runs the protected function under a ``threading.RLock`` and its
``call_async`` is built on tornado's ``gen.coroutine`` (tornado is not a dependency here), so it
cannot guard an ``await`` without either blocking the event loop or pulling in tornado. The
state machine is small enough to own: one event loop, no locks, an injectable clock for tests.
"""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from recsys.errors import RecsysError

T = TypeVar("T")
State = Literal["closed", "open", "half_open"]
StateListener = Callable[[State, State], None]  # (previous, new)


class CircuitOpenError(RecsysError):
    """The breaker is open (or its half-open trial is in flight): the call was not attempted."""


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failures; after ``reset_timeout_s`` lets one
    trial call through (half-open): success closes it, failure opens it again.

    Only exceptions of ``failure_types`` count as failures; others (and cancellation) pass
    through without changing the state. Use from one event loop; not thread-safe.
    """

    def __init__(
        self,
        failure_threshold: int,
        reset_timeout_s: float,
        *,
        failure_types: tuple[type[BaseException], ...] = (Exception,),
        on_state_change: StateListener | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if reset_timeout_s <= 0:
            raise ValueError(f"reset_timeout_s must be > 0, got {reset_timeout_s}")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._failure_types = failure_types
        self._on_state_change = on_state_change
        self._clock = clock
        self._state: State = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False

    @property
    def state(self) -> State:
        return self._state

    @property
    def failure_count(self) -> int:
        """Consecutive failures counted while closed."""
        return self._failures

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Await ``operation()`` unless the breaker is open; raises CircuitOpenError if it is."""
        self._before_call()
        is_trial = self._state == "half_open"
        if is_trial:
            self._trial_in_flight = True
        try:
            result = await operation()
        except self._failure_types:
            self._record_failure()
            raise
        else:
            self._record_success()
            return result
        finally:
            if is_trial:
                self._trial_in_flight = False

    def _before_call(self) -> None:
        if self._state == "open":
            if self._clock() - self._opened_at < self.reset_timeout_s:
                raise CircuitOpenError(
                    f"circuit open for another "
                    f"{self.reset_timeout_s - (self._clock() - self._opened_at):.3f}s"
                )
            self._set_state("half_open")
        if self._state == "half_open" and self._trial_in_flight:
            raise CircuitOpenError("circuit half-open and its trial call is still in flight")

    def _record_success(self) -> None:
        self._failures = 0
        if self._state != "closed":
            self._set_state("closed")

    def _record_failure(self) -> None:
        if self._state == "half_open":
            self._open()
            return
        self._failures += 1
        if self._state == "closed" and self._failures >= self.failure_threshold:
            self._open()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._failures = 0
        self._set_state("open")

    def _set_state(self, new: State) -> None:
        previous, self._state = self._state, new
        if self._on_state_change is not None and previous != new:
            self._on_state_change(previous, new)
