"""Cross-worker cache invalidation: every event's generation bump is published on a Redis channel,
and every worker that holds results in memory (L1) listens and drops that user's entries.

Without it, a list one worker holds in L1 stays served for up to the L1 TTL after an event
recorded by another worker or replica (L2 knows at once: a user's generation comes back with
every L2 read). Pub/sub delivers at most once: a worker that was not subscribed when a message
went out (Redis down, connection dropped) cannot know which users it missed, so it empties its
L1 whenever it subscribes again, and the L1 TTL stays the bound for anything lost in between.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from recsys.stores.redis_connection import ONE_ROUND_TRIP
from recsys.telemetry import EventSink, ignore_event

LOG = logging.getLogger("bentoml.recsys.invalidation")


def invalidation_channel(prefix: str) -> str:
    """The channel a bump publishes the user id on (``ResultCache.bump_user_generation``)."""
    return f"{prefix}invalidations"


class InvalidationListener:
    """Subscribes to ``channel`` in the serving event loop and calls ``on_user(user_id)`` per
    message; ``on_gap()`` runs on every subscription, the first included (messages may have been
    missed before it). Reconnects every ``retry_s`` while Redis is unreachable. Events: ``invalidation``
    per message, ``invalidation_feed(state="up"|"down")``."""

    def __init__(self, redis_url: str, channel: str, on_user: Callable[[str], None],
                 on_gap: Callable[[], None], *, connect_timeout_s: float = 1.0,
                 retry_s: float = 1.0, on_event: EventSink | None = None) -> None:
        self.channel = channel
        self._on_user, self._on_gap = on_user, on_gap
        self._retry_s = retry_s
        self._emit = on_event or ignore_event
        # No socket timeout: a subscriber waits on its socket for as long as no one publishes.
        # The health check pings a connection idle that long, so a dead peer is noticed.
        self._redis = aioredis.Redis.from_url(
            redis_url, socket_connect_timeout=connect_timeout_s, health_check_interval=15,
            **ONE_ROUND_TRIP)
        self._task: asyncio.Task[None] | None = None
        self.subscriptions = 0  # how many times the subscription was made (1 + reconnects)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._follow())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self._redis.aclose()

    async def _follow(self) -> None:
        while True:
            try:
                await self._listen()
            except (RedisError, OSError) as error:
                LOG.warning("cache invalidations not received (%s); subscribing again in %.1f s",
                            error, self._retry_s)
            self._emit("invalidation_feed", state="down")
            await asyncio.sleep(self._retry_s)

    async def _listen(self) -> None:
        async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(self.channel)
            self._on_gap()
            self.subscriptions += 1
            self._emit("invalidation_feed", state="up")
            async for message in pubsub.listen():
                data = message.get("data")
                if message.get("type") == "message" and isinstance(data, bytes):
                    self._on_user(data.decode("utf-8", "replace"))
                    self._emit("invalidation")
