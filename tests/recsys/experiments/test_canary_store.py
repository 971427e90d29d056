"""The canary's state store on a real Redis: one state for every worker, counts summed over
workers, clicks attributed through the lists served, one judge at a time, and a clear error
when Redis is gone."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from devtools.local_redis import free_port
from recsys.errors import StoreError
from recsys.experiments.canary import CanaryState
from recsys.experiments.canary_store import CanaryStore

T = TypeVar("T")
PREFIX = "test:canary:"


def with_store(url: str, scenario: Callable[[CanaryStore], Awaitable[T]]) -> T:
    async def main() -> T:
        store = CanaryStore(url, prefix=PREFIX)
        try:
            return await scenario(store)
        finally:
            await store.aclose()
    return asyncio.run(main())


def a_canary() -> CanaryState:
    return CanaryState.begin({"ranker": "r:1"}, {"ranker": "r:2"}, now=100.0)


def test_the_state_is_saved_and_read_back(redis_url: str) -> None:
    state = a_canary()

    async def scenario(store: CanaryStore) -> tuple[CanaryState | None, CanaryState | None]:
        before = await store.load()
        await store.save(state)
        return before, await store.load()

    assert with_store(redis_url, scenario) == (None, state)


def test_counts_of_every_worker_add_up_per_stage_and_variant(redis_url: str) -> None:
    async def scenario(store: CanaryStore) -> tuple[object, object]:
        await asyncio.gather(
            store.add_counts("c1", 0, "canary", {"requests": 3, "errors": 1, "latency_2": 3}),
            store.add_counts("c1", 0, "canary", {"requests": 2, "clicks": 1, "latency_5": 2}),
            store.add_counts("c1", 0, "control", {"requests": 7}),
            store.add_counts("c1", 1, "canary", {"requests": 100}))
        return await store.counts("c1", 0), await store.counts("c1", 2)

    stage0, empty = with_store(redis_url, scenario)
    assert stage0["canary"].requests == 5 and stage0["canary"].errors == 1  # type: ignore[index]
    assert stage0["canary"].clicks == 1 and stage0["control"].requests == 7  # type: ignore[index]
    assert stage0["canary"].latency[2] == 3 and stage0["canary"].latency[5] == 2  # type: ignore[index]
    assert empty["canary"].requests == 0 and empty["control"].requests == 0  # type: ignore[index]


def test_the_last_list_served_to_a_user_is_kept_for_their_clicks(redis_url: str) -> None:
    async def scenario(store: CanaryStore) -> tuple[object, object]:
        await store.remember_served("u1", {"variant": "canary", "items": ["a", "b"]})
        await store.remember_served("u1", {"variant": "control", "items": ["c"]})
        return await store.served_to("u1"), await store.served_to("u2")

    assert with_store(redis_url, scenario) == ({"variant": "control", "items": ["c"]}, None)


def test_one_worker_at_a_time_holds_the_judging_lease(redis_url: str) -> None:
    async def scenario(store: CanaryStore) -> list[bool]:
        taken = [await store.lease("worker-a", 0.3), await store.lease("worker-b", 0.3),
                 await store.lease("worker-a", 0.3)]  # renewed by its holder
        await asyncio.sleep(0.45)  # the holder stopped renewing: the lease expires
        return [*taken, await store.lease("worker-b", 0.3)]

    assert with_store(redis_url, scenario) == [True, False, True, True]


def test_only_its_holder_gives_the_lease_up(redis_url: str) -> None:
    async def scenario(store: CanaryStore) -> list[bool]:
        return [await store.lease("worker-a", 30), await store.release("worker-b"),
                await store.lease("worker-b", 30),  # still worker-a's
                await store.release("worker-a"), await store.lease("worker-b", 30)]

    assert with_store(redis_url, scenario) == [True, False, False, True, True]


def test_verdicts_are_kept_in_order(redis_url: str) -> None:
    async def scenario(store: CanaryStore) -> tuple[list[object], list[object]]:
        for n in range(5):
            await store.add_verdict("c2", {"n": n})
        return await store.verdicts("c2"), await store.verdicts("c2", last=2)

    everything, last = with_store(redis_url, scenario)
    assert [v["n"] for v in everything] == [0, 1, 2, 3, 4]  # type: ignore[index]
    assert [v["n"] for v in last] == [3, 4]  # type: ignore[index]


def test_a_store_without_redis_raises_a_store_error_quickly() -> None:
    async def scenario(store: CanaryStore) -> None:
        await store.load()

    with pytest.raises(StoreError, match="canary store: ConnectionError"):
        with_store(f"redis://127.0.0.1:{free_port()}/0", scenario)


def test_a_state_moved_by_someone_else_is_not_overwritten(redis_url: str) -> None:
    """The judging worker and an operator both move the canary from what they read: the second
    to save finds it moved and writes nothing."""
    state = a_canary()
    judged = state.moved("stage 0 passed", "running", 200.0, stage=1)
    paused = state.moved("paused by an operator", "paused", 201.0)

    async def scenario(store: CanaryStore) -> tuple[bool, bool, CanaryState | None]:
        await store.save(state)
        first = await store.save(paused, replacing=state)
        second = await store.save(judged, replacing=state)
        return first, second, await store.load()

    assert with_store(redis_url, scenario) == (True, False, paused)
