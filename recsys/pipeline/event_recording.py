"""POST /events: append a user's event to their history and invalidate their cached results."""
from __future__ import annotations

from typing import Any, Protocol

from recsys.errors import StoreError
from recsys.pipeline.resolver import RequestResolver
from recsys.stores.cache import ResultCache
from recsys.stores.history import HistoryStore


class ClickRecorder(Protocol):
    """Told of each recorded event (a canary attributes clicks to the variant that served)."""

    async def clicked(self, user_id: str, item_id: str, event_type: str) -> None: ...


class EventRecorder:
    """`history` None: the service runs without an event store, and every event is refused.
    An event with an id is remembered `event_id_ttl_s` seconds: its retries are not recorded."""

    def __init__(self, resolver: RequestResolver, history: HistoryStore | None,
                 cache: ResultCache | None, event_id_ttl_s: float = 86_400.0) -> None:
        self.resolver, self.history, self.cache = resolver, history, cache
        self.event_id_ttl_s = event_id_ttl_s
        self.clicks: ClickRecorder | None = None

    async def record_event(self, user_id: str, item_id: str, event_type: str,
                           timestamp: float, event_id: str | None = None) -> dict[str, Any]:
        """UnknownIdError for an item the champion's catalogue lacks; StoreError when the event
        could not be stored (nothing was recorded, or, when Redis timed out, perhaps it was:
        a retry with the same `event_id` is then recorded at most once)."""
        self.resolver.champion.rows_of((item_id,), "item_id")
        if self.history is None:
            raise StoreError("no event store configured (RECSYS_REDIS_URL)")
        recorded = True
        if event_id is None:
            kept = await self.history.append(user_id, item_id, event_type, timestamp)
        else:
            kept, recorded = await self.history.append_once(
                user_id, item_id, event_type, timestamp, event_id, self.event_id_ttl_s)
        duplicate = not recorded
        # A retry is not a second click for the canary. Its bump is repeated: the first call may
        # have stored the event and then failed before invalidating (a Redis timeout).
        if self.clicks is not None and not duplicate:
            await self.clicks.clicked(user_id, item_id, event_type)
        invalidated = True
        if self.cache is not None:
            try:
                await self.cache.bump_user_generation(user_id)
            except StoreError:
                invalidated = False  # this worker's L1 was cleared; other workers' entries expire
        return {"user_id": user_id, "events_kept": kept, "cache_invalidated": invalidated,
                "duplicate": duplicate}
