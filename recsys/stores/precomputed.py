"""The precomputed tier: /recommend lists a batch job wrote to Redis, per model set and user.

Key ``<prefix>precomputed:<hash of the model versions and list settings>:<user id>``: models
promoted since the job ran, or settings that shape lists differently (candidates, diversity, the
ranking policy), look under another key and never see its lists. The value is the result (as /recommend
returns it), the k it was computed for and the user's event generation when the job read their
history (``codec.encode_value``); a list is served only while that generation is current, so an
event recorded after the job (which bumps it, ``ResultCache.bump_user_generation``) retires it.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from recsys.breaker import CircuitBreaker, CircuitOpenError
from recsys.errors import StoreError
from recsys.stores.cache_keys import generation_key, make_key, parse_generation
from recsys.stores.codec import UndecodableValue, decode_value, encode_value
from recsys.stores.redis_connection import ONE_ROUND_TRIP
from recsys.telemetry import EventSink, ignore_event

_FAILED: Any = object()


def tier_key(prefix: str, versions: Mapping[str, str], user_id: str,
             list_settings: Mapping[str, Any] | None = None) -> str:
    return f"{prefix}{make_key('precomputed', versions, list_settings or {})}:{user_id}"


@dataclass(frozen=True)
class PrecomputedList:
    """One user's list as the batch job stores it: `result` is /recommend's answer for a request
    with k `k` and nothing else, computed at the user's event `generation`."""

    user_id: str
    generation: int
    k: int
    result: dict[str, Any]


class PrecomputedTier:
    """Reads (the service) and writes (the batch job) precomputed lists in Redis.

    Every call has a timeout and goes through the circuit breaker; reads never raise: a failed
    read is an ``error`` outcome and the caller computes. ``on_event`` receives
    ``precomputed(outcome)`` per read: ``hit``, ``miss`` (no list for these models and user),
    ``stale`` (the user has an event newer than the list), ``short`` (a list of fewer than the
    k asked for), ``error`` (Redis failed, or a value this module did not write).
    """

    def __init__(self, redis_url: str, timeout_s: float, breaker: CircuitBreaker, *,
                 list_settings: Mapping[str, Any] | None = None, prefix: str = "recsys:",
                 on_event: EventSink | None = None) -> None:
        """`list_settings`: what beyond the models shapes a list (ServingSettings.list_fields);
        reader and writer must agree on them to share lists."""
        self.client = aioredis.from_url(redis_url, socket_timeout=timeout_s,
                                        socket_connect_timeout=timeout_s, retry_on_timeout=False,
                                        **ONE_ROUND_TRIP)
        self.timeout_s, self.breaker, self.prefix = timeout_s, breaker, prefix
        self.list_settings = dict(list_settings or {})
        self.on_event = on_event or ignore_event

    async def read(self, versions: Mapping[str, str], user_id: str, k: int) -> dict[str, Any] | None:
        """The user's stored result cut to `k` items, when these models' list is stored, still
        current and at least `k` long; else None."""
        keys = [self._key(versions, user_id), generation_key(self.prefix, user_id)]
        replies = await self._call(lambda: self.client.mget(keys))
        outcome, result = self._outcome(replies, k)
        self.on_event("precomputed", outcome=outcome)
        return result

    async def generations(self, user_ids: Sequence[str]) -> list[int]:
        """The users' current event generations (0: never bumped), in order; StoreError when
        Redis fails or holds something else under a generation key."""
        if not user_ids:
            return []
        keys = [generation_key(self.prefix, u) for u in user_ids]
        replies = await self._call(lambda: self.client.mget(keys))
        parsed = [] if replies is _FAILED else [parse_generation(r) for r in replies]
        if replies is _FAILED or None in parsed:
            raise StoreError(f"could not read the event generations of {len(keys)} users")
        return [int(g or 0) for g in parsed]

    async def write(self, versions: Mapping[str, str], lists: Sequence[PrecomputedList],
                    ttl_s: float) -> None:
        """Store `lists` under these model versions for `ttl_s` seconds, in one round trip;
        StoreError when Redis fails."""
        ttl_ms = max(1, int(ttl_s * 1000))

        async def write_all() -> None:
            async with self.client.pipeline(transaction=False) as pipe:
                for entry in lists:
                    payload = encode_value({"k": entry.k, "result": entry.result},
                                           entry.generation)
                    pipe.set(self._key(versions, entry.user_id), payload, px=ttl_ms)
                await pipe.execute()

        if lists and await self._call(write_all) is _FAILED:
            raise StoreError(f"could not write {len(lists)} precomputed lists")

    async def aclose(self) -> None:
        await self.client.aclose()

    def _key(self, versions: Mapping[str, str], user_id: str) -> str:
        return tier_key(self.prefix, versions, user_id, self.list_settings)

    def _outcome(self, replies: Any, k: int) -> tuple[str, dict[str, Any] | None]:
        if replies is _FAILED:
            return "error", None
        raw, current = replies
        if raw is None:
            return "miss", None
        try:
            generation, stored = decode_value(raw)
            result, stored_k = stored["result"], int(stored["k"])
        except (UndecodableValue, KeyError, TypeError, ValueError):
            return "error", None
        if generation != parse_generation(current):
            return "stale", None
        if k > stored_k:
            return "short", None
        # the first k of a longer list are the k-item list: re-ranking picks greedily, best first
        return "hit", result if k == stored_k else {**result, "items": result["items"][:k]}

    async def _call(self, command: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await self.breaker.call(lambda: asyncio.wait_for(command(), self.timeout_s))
        except (RedisError, OSError, asyncio.TimeoutError, CircuitOpenError) as error:
            self.on_event("redis_error", op="precomputed", error=type(error).__name__)
            return _FAILED
