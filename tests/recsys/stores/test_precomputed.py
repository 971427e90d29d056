"""PrecomputedTier on a real Redis: keys per model versions and user, the generation check, lists
cut to k, and failures that never reach a reader."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis

from devtools.local_redis import LocalRedis
from recsys.breaker import CircuitBreaker
from recsys.errors import StoreError
from recsys.stores.cache_keys import generation_key
from recsys.stores.precomputed import PrecomputedList, PrecomputedTier, tier_key
from tests.support.events import Events

T = TypeVar("T")
VERSIONS = {"embedding": "recsys-embedding:v1-aaaa", "ranker": "recsys-ranker:v1-bbbb"}
PROMOTED = {"embedding": "recsys-embedding:v2-cccc", "ranker": "recsys-ranker:v2-dddd"}
LIST_SETTINGS = {"diversity": 0.0}


def result(user: str, k: int) -> dict[str, Any]:
    return {"user_id": user, "items": [{"item_id": f"i{n}", "rank": n + 1} for n in range(k)],
            "model_versions": VERSIONS, "ranker": "ranker", "degraded": False,
            "degraded_reasons": []}


def with_tier(url: str, events: Events, scenario: Callable[[PrecomputedTier], Awaitable[T]]) -> T:
    async def main() -> T:
        tier = PrecomputedTier(url, 0.5, CircuitBreaker(3, 60.0), on_event=events,
                               list_settings=LIST_SETTINGS)
        try:
            return await scenario(tier)
        finally:
            await tier.aclose()
    return asyncio.run(main())


def outcomes(events: Events) -> list[str]:
    return [labels["outcome"] for name, labels in events.seen if name == "precomputed"]


def test_a_list_is_served_for_its_models_and_user_cut_to_k(redis_url: str) -> None:
    async def scenario(tier: PrecomputedTier) -> list[Any]:
        await tier.write(VERSIONS, [PrecomputedList("u1", 0, 10, result("u1", 10))], 60.0)
        return [await tier.read(VERSIONS, "u1", 10), await tier.read(VERSIONS, "u1", 3),
                await tier.read(VERSIONS, "u1", 11), await tier.read(VERSIONS, "u2", 10),
                await tier.read(PROMOTED, "u1", 10)]

    events = Events()
    full, three, longer, other_user, promoted = with_tier(redis_url, events, scenario)
    assert full == result("u1", 10)
    assert three == {**result("u1", 10), "items": result("u1", 10)["items"][:3]}
    assert longer is None and other_user is None and promoted is None
    assert outcomes(events) == ["hit", "hit", "short", "miss", "miss"]
    key = tier_key("recsys:", VERSIONS, "u1", LIST_SETTINGS)
    assert key.startswith("recsys:precomputed:") and key.endswith(":u1")
    with redis.Redis.from_url(redis_url) as client:
        assert 0 < client.pttl(key) <= 60_000


def test_a_list_is_stale_once_the_user_has_a_newer_event(redis_url: str) -> None:
    async def scenario(tier: PrecomputedTier) -> list[Any]:
        generations = await tier.generations(["u1", "u2"])
        await tier.write(VERSIONS, [PrecomputedList(u, g, 10, result(u, 10))
                                    for u, g in zip(["u1", "u2"], generations)], 60.0)
        with redis.Redis.from_url(redis_url) as client:
            client.incr(generation_key("recsys:", "u1"))  # what /events does
        return [generations, await tier.read(VERSIONS, "u1", 10),
                await tier.read(VERSIONS, "u2", 10), await tier.generations(["u1", "u2"])]

    events = Events()
    before, u1, u2, after = with_tier(redis_url, events, scenario)
    assert before == [0, 0] and after == [1, 0]
    assert u1 is None and u2 == result("u2", 10)
    assert outcomes(events) == ["stale", "hit"]


def test_garbage_under_a_key_is_an_error_outcome_not_an_exception(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        client.set(tier_key("recsys:", VERSIONS, "u1", LIST_SETTINGS), b"not a value")
        client.set(generation_key("recsys:", "u2"), b"not a counter")
    events = Events()

    async def scenario(tier: PrecomputedTier) -> Any:
        found = await tier.read(VERSIONS, "u1", 10)
        with pytest.raises(StoreError, match="generations of 2 users"):
            await tier.generations(["u1", "u2"])
        return found

    assert with_tier(redis_url, events, scenario) is None
    assert outcomes(events) == ["error"]


def test_redis_down_reads_none_and_refuses_writes(redis_server: LocalRedis) -> None:
    url = redis_server.url
    redis_server.stop()
    events = Events()

    async def scenario(tier: PrecomputedTier) -> Any:
        found = await tier.read(VERSIONS, "u1", 10)
        with pytest.raises(StoreError, match="could not write 1 precomputed lists"):
            await tier.write(VERSIONS, [PrecomputedList("u1", 0, 10, result("u1", 10))], 60.0)
        return found

    try:
        assert with_tier(url, events, scenario) is None
    finally:
        redis_server.start()
    assert outcomes(events) == ["error"]
    assert events.count("redis_error", op="precomputed") == 2


def test_lists_computed_under_other_list_settings_are_not_read(redis_url: str) -> None:
    async def scenario(tier: PrecomputedTier) -> list[Any]:
        writer = PrecomputedTier(redis_url, 0.5, CircuitBreaker(3, 60.0),
                                 list_settings={"diversity": 0.3})
        try:
            await writer.write(VERSIONS, [PrecomputedList("u1", 0, 10, result("u1", 10))], 60.0)
        finally:
            await writer.aclose()
        return [await tier.read(VERSIONS, "u1", 10)]

    events = Events()
    assert with_tier(redis_url, events, scenario) == [None]
    assert outcomes(events) == ["miss"]
