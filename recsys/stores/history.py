"""Users' recent events in Redis: POST /events appends, recommendations read them back."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from recsys.breaker import CircuitBreaker, CircuitOpenError
from recsys.errors import StoreError
from recsys.stores.redis_connection import ONE_ROUND_TRIP
from recsys.telemetry import EventSink, ignore_event

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "rating")


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

    async def recent_items(self, user_id: str, limit: int) -> list[str]:
        """Up to `limit` item ids the user interacted with, oldest first. StoreError on failure."""
        raw = await self._call("read", lambda: self.client.lrange(self.prefix + user_id, 0, limit - 1))
        items = []
        for entry in reversed(raw):
            try:
                items.append(str(json.loads(entry)["item_id"]))
            except (ValueError, KeyError, TypeError):
                self.on_event("history_decode_error")
        return items

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

    async def _call(self, operation: str, call: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await self.breaker.call(lambda: asyncio.wait_for(call(), self.timeout_s))
        except (RedisError, OSError, asyncio.TimeoutError, CircuitOpenError) as error:
            self.on_event("history_error", operation=operation, error=type(error).__name__)
            raise StoreError(f"event store {operation} failed: {type(error).__name__}",
                             retry_after_s=self.breaker.reset_timeout_s) from error

    async def aclose(self) -> None:
        await self.client.aclose()
