"""Users' recent events in a real Redis: order, cap, outages, recovery and bad entries."""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import redis

from devtools.local_redis import LocalRedis, free_port
from recsys.breaker import CircuitBreaker
from recsys.errors import StoreError
from recsys.stores.history import HistoryStore, RecentEvents
from tests.support.events import Events

T = TypeVar("T")
PREFIX = "test:history:"
RESET_S = 0.3


def with_store(url: str, scenario: Callable[[HistoryStore], Awaitable[T]], *, max_events: int = 5,
               events: Events | None = None) -> T:
    async def main() -> T:
        store = HistoryStore(url, max_events, 0.5, CircuitBreaker(2, RESET_S), prefix=PREFIX,
                             on_event=events)
        try:
            return await scenario(store)
        finally:
            await store.aclose()
    return asyncio.run(main())


def test_recent_items_are_oldest_first(redis_url: str) -> None:
    async def scenario(store: HistoryStore) -> tuple[list[int], list[str], list[str], list[str]]:
        kept = [await store.append("u1", item, "click", 1000.0 + n)
                for n, item in enumerate(["a", "b", "c"])]
        return (kept, await store.recent_items("u1", 10), await store.recent_items("u1", 2),
                await store.recent_items("someone-else", 10))

    kept, everything, latest_two, nobody = with_store(redis_url, scenario)
    assert kept == [1, 2, 3]
    assert everything == ["a", "b", "c"]
    assert latest_two == ["b", "c"]  # the limit keeps the most recent ones
    assert nobody == []


def test_recent_events_carry_the_time_of_the_latest_one(redis_url: str) -> None:
    async def scenario(store: HistoryStore) -> tuple[RecentEvents, RecentEvents]:
        for n, item in enumerate(["a", "b", "c"]):
            await store.append("u1", item, "view", 2000.0 - n)  # sent out of time order
        return await store.recent_events("u1", 10), await store.recent_events("nobody", 10)

    events, nobody = with_store(redis_url, scenario)
    assert events == RecentEvents(["a", "b", "c"], 2000.0)
    assert nobody == RecentEvents([], None)


def test_history_is_capped_at_max_events(redis_url: str) -> None:
    async def scenario(store: HistoryStore) -> tuple[list[int], list[str]]:
        kept = [await store.append("u1", f"i{n}", "view", float(n)) for n in range(8)]
        return kept, await store.recent_items("u1", 100)

    kept, items = with_store(redis_url, scenario, max_events=3)
    assert kept == [1, 2, 3, 3, 3, 3, 3, 3]
    assert items == ["i5", "i6", "i7"]
    with redis.Redis.from_url(redis_url) as client:
        assert client.llen(PREFIX + "u1") == 3
        entry = json.loads(client.lindex(PREFIX + "u1", 0))
    assert entry == {"item_id": "i7", "type": "view", "ts": 7.0}


def test_append_once_records_an_event_id_once_per_user_while_remembered(
        redis_url: str) -> None:
    async def scenario(store: HistoryStore) -> list[tuple[int, bool]]:
        calls = [store.append_once("u1", "a", "click", 1.0, "id-1", 0.3),
                 store.append_once("u1", "a", "click", 1.0, "id-1", 0.3),  # a retry
                 store.append_once("u2", "a", "click", 1.0, "id-1", 0.3)]  # another user
        done = [await call for call in calls]
        await asyncio.sleep(0.4)  # forgotten: the same id is a new event again
        done.append(await store.append_once("u1", "b", "view", 2.0, "id-1", 0.3))
        return done

    assert with_store(redis_url, scenario) == [(1, True), (1, False), (1, True), (2, True)]
    with redis.Redis.from_url(redis_url) as client:
        newest = json.loads(client.lindex(PREFIX + "u1", 0))
        markers = sorted(k.decode() for k in client.keys("test:history-event-ids:*"))
    assert newest == {"item_id": "b", "type": "view", "ts": 2.0, "id": "id-1"}
    assert markers == ["test:history-event-ids:u1:id-1"]  # u2's expired, u1's was set again


def test_append_once_keeps_the_cap(redis_url: str) -> None:
    async def scenario(store: HistoryStore) -> list[int]:
        return [(await store.append_once("u1", f"i{n}", "view", float(n), f"e{n}", 60))[0]
                for n in range(5)]

    assert with_store(redis_url, scenario, max_events=3) == [1, 2, 3, 3, 3]


def test_undecodable_entries_are_skipped_and_counted(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        # LPUSH: the last one pushed is the newest.
        client.lpush(PREFIX + "u1", json.dumps({"item_id": "old", "type": "view", "ts": 1}),
                     b"not json", b"\xff\xfe", b"[1, 2]", b'{"type": "view"}', b"42",
                     json.dumps({"item_id": 17, "type": "click", "ts": 2}))
    events = Events()
    items = with_store(redis_url, lambda store: store.recent_items("u1", 10), events=events)
    assert items == ["old", "17"]
    assert events.count("history_decode_error") == 5


def test_redis_down_raises_store_error_opens_breaker_and_recovers(
        redis_server: LocalRedis, redis_url: str) -> None:
    events = Events()

    async def scenario(store: HistoryStore) -> None:
        await store.append("u1", "a", "view", 1.0)
        redis_server.stop()
        try:
            for _ in range(2):
                with pytest.raises(StoreError, match="event store read failed"):
                    await store.recent_items("u1", 10)
            assert store.breaker.state == "open"
            started = time.perf_counter()
            with pytest.raises(StoreError, match="CircuitOpenError"):
                await store.append("u1", "b", "view", 2.0)
            assert time.perf_counter() - started < 0.25  # refused without trying Redis
        finally:
            redis_server.start()
        await asyncio.sleep(RESET_S + 0.05)
        assert await store.append("u1", "c", "view", 3.0) == 1  # the restarted server is empty
        assert store.breaker.state == "closed"
        assert await store.recent_items("u1", 10) == ["c"]

    with_store(redis_url, scenario, events=events)
    errors = [labels for name, labels in events.seen if name == "history_error"]
    assert [e["operation"] for e in errors] == ["read", "read", "write"]
    assert errors[-1]["error"] == "CircuitOpenError"


def test_no_server_raises_store_error_with_retry_after() -> None:
    events = Events()
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there

    async def scenario(store: HistoryStore) -> list[StoreError]:
        errors = []
        for call in (store.recent_items("u1", 10), store.append("u1", "a", "view", 1.0)):
            with pytest.raises(StoreError, match="event store (read|write) failed") as caught:
                await call
            errors.append(caught.value)
        return errors

    errors = with_store(nowhere, scenario, events=events)
    assert events.count("history_error") == 2
    assert all(error.retry_after_s == RESET_S for error in errors)


def test_a_paused_server_times_out(redis_url: str) -> None:
    pause_ms = 1500

    async def scenario(store: HistoryStore) -> float:
        with redis.Redis.from_url(redis_url) as client:  # every client's commands wait
            client.execute_command("CLIENT", "PAUSE", str(pause_ms), "ALL")
        started = time.perf_counter()
        with pytest.raises(StoreError, match="TimeoutError"):
            await store.recent_items("u1", 10)
        took = time.perf_counter() - started
        await asyncio.sleep(pause_ms / 1000 - took + 0.1)  # let the pause end for later tests
        return took

    assert with_store(redis_url, scenario) < 1.2  # the store's 0.5 s timeout, not the pause


def test_events_without_a_numeric_time_leave_the_latest_time_unknown(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        client.lpush(PREFIX + "u1", json.dumps({"item_id": "x", "type": "view"}),
                     json.dumps({"item_id": "y", "type": "view", "ts": "soon"}))
    events = with_store(redis_url, lambda store: store.recent_events("u1", 10))
    assert events == RecentEvents(["x", "y"], None)
