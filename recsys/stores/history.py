"""Users' recent events in Redis: POST /events appends, recommendations read them back."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from recsys.breaker import CircuitBreaker, CircuitOpenError
from recsys.errors import StoreError
from recsys.stores.redis_connection import ONE_ROUND_TRIP
from recsys.telemetry import EventSink, ignore_event

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "rating")

# KEYS: the user's history list, the event id's marker. ARGV: the entry, the cap, the marker's
# TTL in ms. The marker and the entry are written together or not at all (a script runs
# atomically), so a retry of an event whose answer was lost is recognised and never stored twice.
_APPEND_ONCE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[3]) then
  redis.call('LPUSH', KEYS[1], ARGV[1])
  redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
  return {1, redis.call('LLEN', KEYS[1])}
end
return {0, redis.call('LLEN', KEYS[1])}
"""


class RecentEvents(NamedTuple):
    items: list[str]  # item ids, oldest first
    last_time: float | None  # unix seconds of the latest event; None: none, or none dated


class HistoryStore:
    """A capped Redis list per user, newest first; each entry is a small JSON object."""

    def __init__(self, redis_url: str, max_events: int, timeout_s: float, breaker: CircuitBreaker,
                 prefix: str = "recsys:history:", on_event: EventSink | None = None) -> None:
        self.client = aioredis.from_url(redis_url, socket_timeout=timeout_s,
                                        socket_connect_timeout=timeout_s, retry_on_timeout=False,
                                        **ONE_ROUND_TRIP)
        self.max_events, self.timeout_s = max_events, timeout_s
        self.breaker, self.prefix = breaker, prefix
        self.on_event = on_event or ignore_event
        self._append_once = self.client.register_script(_APPEND_ONCE)  # EVALSHA, then EVAL once

    async def recent_items(self, user_id: str, limit: int) -> list[str]:
        """Up to `limit` item ids the user interacted with, oldest first. StoreError on failure."""
        return (await self.recent_events(user_id, limit)).items

    async def recent_events(self, user_id: str, limit: int) -> RecentEvents:
        """`recent_items`, with the time of the latest of them. StoreError on failure."""
        raw = await self._call("read", lambda: self.client.lrange(self.prefix + user_id, 0, limit - 1))
        items, times = [], []
        for entry in reversed(raw):
            try:
                event = json.loads(entry)
                items.append(str(event["item_id"]))
            except (ValueError, KeyError, TypeError):
                self.on_event("history_decode_error")
                continue
            if isinstance(event.get("ts"), (int, float)):
                times.append(float(event["ts"]))
        return RecentEvents(items, max(times) if times else None)

    async def append(self, user_id: str, item_id: str, event_type: str, timestamp: float) -> int:
        """Record one event; returns the number of events kept for the user."""
        entry = json.dumps({"item_id": item_id, "type": event_type, "ts": timestamp})
        key = self.prefix + user_id

        async def write() -> int:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.lpush(key, entry)
                pipe.ltrim(key, 0, self.max_events - 1)
                pipe.llen(key)
                return int((await pipe.execute())[-1])
        return int(await self._call("write", write))

    async def append_once(self, user_id: str, item_id: str, event_type: str, timestamp: float,
                          event_id: str, remember_s: float) -> tuple[int, bool]:
        """Record one event unless an event with `event_id` was recorded for the user in the last
        `remember_s` seconds; returns (events kept for the user, whether this call recorded it).
        One round trip, like `append`."""
        entry = json.dumps({"item_id": item_id, "type": event_type, "ts": timestamp,
                            "id": event_id})
        # Not under the history lists' prefix, so no user id can name a marker; event ids have
        # no ':' (serving/schemas.py), so (user, event id) pairs cannot collide either.
        keys = [self.prefix + user_id, f"{self.prefix.rstrip(':')}-event-ids:{user_id}:{event_id}"]
        args: list[str | int] = [entry, self.max_events, max(1, int(remember_s * 1000))]

        async def write() -> tuple[int, bool]:
            recorded, kept = await self._append_once(keys=keys, args=args)
            return int(kept), bool(recorded)
        result: tuple[int, bool] = await self._call("write", write)
        return result

    async def _call(self, operation: str, call: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await self.breaker.call(lambda: asyncio.wait_for(call(), self.timeout_s))
        except (RedisError, OSError, asyncio.TimeoutError, CircuitOpenError) as error:
            self.on_event("history_error", operation=operation, error=type(error).__name__)
            raise StoreError(f"event store {operation} failed: {type(error).__name__}",
                             retry_after_s=self.breaker.reset_timeout_s) from error

    async def aclose(self) -> None:
        await self.client.aclose()
