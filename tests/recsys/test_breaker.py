"""Circuit breaker state machine, driven by a fake clock (no sleeping)."""
from __future__ import annotations

import asyncio

import pytest

from recsys.breaker import CircuitBreaker, CircuitOpenError, State


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Boom(Exception):
    pass


async def ok() -> str:
    return "ok"


async def fail() -> str:
    raise Boom("down")


Changes = list[tuple[State, State]]


def make(clock: FakeClock, changes: Changes, threshold: int = 3) -> CircuitBreaker:
    return CircuitBreaker(
        threshold,
        10.0,
        failure_types=(Boom,),
        on_state_change=lambda old, new: changes.append((old, new)),
        clock=clock,
    )


async def fail_times(breaker: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        with pytest.raises(Boom):
            await breaker.call(fail)


def test_opens_after_threshold_consecutive_failures() -> None:
    async def scenario() -> None:
        clock, changes = FakeClock(), Changes()
        breaker = make(clock, changes)
        await fail_times(breaker, 2)
        assert breaker.state == "closed" and breaker.failure_count == 2
        assert await breaker.call(ok) == "ok"  # a success resets the count
        assert breaker.failure_count == 0
        await fail_times(breaker, 3)
        assert breaker.state == "open"
        assert changes == [("closed", "open")]
        calls = 0

        async def counted() -> str:
            nonlocal calls
            calls += 1
            return "ok"

        with pytest.raises(CircuitOpenError):
            await breaker.call(counted)
        assert calls == 0

    asyncio.run(scenario())


def test_half_open_trial_success_closes() -> None:
    async def scenario() -> None:
        clock, changes = FakeClock(), Changes()
        breaker = make(clock, changes)
        await fail_times(breaker, 3)
        clock.now += 9.9
        with pytest.raises(CircuitOpenError):
            await breaker.call(ok)
        clock.now += 0.1
        assert await breaker.call(ok) == "ok"
        assert breaker.state == "closed"
        assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]

    asyncio.run(scenario())


def test_half_open_trial_failure_reopens_for_a_full_timeout() -> None:
    async def scenario() -> None:
        clock, changes = FakeClock(), Changes()
        breaker = make(clock, changes)
        await fail_times(breaker, 3)
        clock.now += 10.0
        await fail_times(breaker, 1)
        assert breaker.state == "open"
        clock.now += 5.0
        with pytest.raises(CircuitOpenError):
            await breaker.call(ok)
        assert changes[-2:] == [("open", "half_open"), ("half_open", "open")]

    asyncio.run(scenario())


def test_half_open_lets_one_trial_through_at_a_time() -> None:
    async def scenario() -> None:
        clock, changes = FakeClock(), Changes()
        breaker = make(clock, changes)
        await fail_times(breaker, 3)
        clock.now += 10.0
        release = asyncio.Event()

        async def slow() -> str:
            await release.wait()
            return "trial"

        trial = asyncio.create_task(breaker.call(slow))
        await asyncio.sleep(0)
        assert breaker.state == "half_open"
        with pytest.raises(CircuitOpenError):
            await breaker.call(ok)
        release.set()
        assert await trial == "trial"
        assert breaker.state == "closed"

    asyncio.run(scenario())


def test_other_exceptions_and_cancellation_do_not_count() -> None:
    async def scenario() -> None:
        clock, changes = FakeClock(), Changes()
        breaker = make(clock, changes, threshold=1)

        async def bug() -> str:
            raise KeyError("not a dependency failure")

        with pytest.raises(KeyError):
            await breaker.call(bug)
        assert breaker.state == "closed"
        await fail_times(breaker, 1)
        clock.now += 10.0
        blocker = asyncio.Event()

        async def hang() -> str:
            await blocker.wait()
            return "never"

        trial = asyncio.create_task(breaker.call(hang))
        await asyncio.sleep(0)
        trial.cancel()
        with pytest.raises(asyncio.CancelledError):
            await trial
        assert await breaker.call(ok) == "ok"  # the cancelled trial freed the half-open slot
        assert breaker.state == "closed"

    asyncio.run(scenario())


@pytest.mark.parametrize(("threshold", "reset"), [(0, 1.0), (1, 0.0)])
def test_rejects_bad_settings(threshold: int, reset: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        CircuitBreaker(threshold, reset)
