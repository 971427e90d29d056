"""What a request needs before any model scores it, the same for every endpoint: the model slot
its user is routed to, the catalogue rows and categories it names, the user's state (history,
attributes, seen items) and the user vector."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import numpy.typing as npt

from recsys.context import Context
from recsys.errors import RecsysError, StoreError
from recsys.experiments.routing import Router
from recsys.features import encode_history, recent_rows
from recsys.models.registry_client import CHAMPION
from recsys.pipeline.fallbacks import fallback_user_vector
from recsys.pipeline.request import RecommendRequest
from recsys.pipeline.reranking import filter_candidates
from recsys.pipeline.retrieval import Candidates
from recsys.pipeline.slots import ModelSlot
from recsys.stores.cache import ResultCache
from recsys.stores.cache_keys import make_key
from recsys.stores.history import HistoryStore
from recsys.telemetry import Telemetry

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Routed:
    """The experiment variant a user is in and the slot that serves it."""

    variant: str
    slot: ModelSlot


@dataclass(frozen=True)
class ResolvedRequest:
    """A /recommend request with its ids resolved on the slot that serves it."""

    request: RecommendRequest
    variant: str
    slot: ModelSlot
    recent: IntArray  # rows of recent_items, in order
    excluded: IntArray  # rows of exclude_items
    include_genres: IntArray | None  # genre columns; None: no filter
    exclude_genres: IntArray | None

    def most_filtered(self, seen: IntArray) -> int | None:
        """The most candidates the filters can drop: each seen or excluded row once, or any
        number (None) with a category filter."""
        if any(g is not None and g.size for g in (self.include_genres, self.exclude_genres)):
            return None
        return len(seen) + len(self.excluded)

    def filtered(self, candidates: Candidates, seen: IntArray) -> Candidates:
        """`candidates` less the seen (sorted, unique) and excluded rows, and less those the
        category filters drop; retrieval order kept."""
        dropped = np.union1d(seen, self.excluded) if self.excluded.size else seen
        return filter_candidates(candidates, dropped, self.slot.catalog, self.include_genres,
                                 self.exclude_genres)


@dataclass(frozen=True)
class UserState:
    history: IntArray  # [H] padded to the slot's history length, most recent last
    attributes: IntArray  # [A] attribute ids
    seen: IntArray  # rows the user has interacted with (never recommended), sorted, unique
    last_event_time: float | None = None  # unix seconds of the latest event; None: unknown

    def context(self, request_context: Context, now: float | None = None) -> Context:
        """The request's context with the time from this user's latest event to `now` (default:
        the current time)."""
        now = time.time() if now is None else now
        since = None if self.last_event_time is None else now - self.last_event_time
        return replace(request_context, seconds_since_last_event=since)


@dataclass(frozen=True)
class ServedModels:
    """The model slots a process serves, by alias, and the router that picks one per user. One
    value: a new set of models replaces it whole (RequestResolver.serve), so a request that
    resolved its slot finishes on the models it started with."""

    slots: Mapping[str, ModelSlot]
    router: Router

    def __post_init__(self) -> None:
        if CHAMPION not in self.slots:
            raise ValueError(f"a champion model slot is required, got {sorted(self.slots)}")

    @property
    def versions(self) -> dict[str, dict[str, str]]:
        """alias -> model kind -> version tag."""
        return {alias: dict(slot.versions) for alias, slot in self.slots.items()}


class RequestResolver:
    """Routes users to slots and resolves what their requests name, on that slot.

    `history` adds the user's recorded events to the training-time history (None: training
    history only); `vector_cache` caches user vectors by (embedding version, history,
    attributes), worth a Redis round trip only when the user tower is a process hop away.
    """

    def __init__(self, models: ServedModels, history: HistoryStore | None,
                 vector_cache: ResultCache | None, telemetry: Telemetry) -> None:
        self.models = models
        self.history, self.vector_cache, self.telemetry = history, vector_cache, telemetry

    def serve(self, models: ServedModels) -> ServedModels:
        """Serve `models` from now on (one assignment: atomic for every coroutine of this
        process); returns the models served until now."""
        previous, self.models = self.models, models
        return previous

    @property
    def slots(self) -> Mapping[str, ModelSlot]:
        return self.models.slots

    @property
    def champion(self) -> ModelSlot:
        return self.models.slots[CHAMPION]

    def route(self, user_id: str) -> Routed:
        models = self.models  # one read: the slot and the variant come from the same set
        variant = models.router.variant_for(user_id)
        slot = models.slots.get(variant.alias)
        if slot is None:
            self.telemetry.event("variant_unavailable", variant=variant.name)
            return Routed(variant.name, models.slots[CHAMPION])
        return Routed(variant.name, slot)

    def resolve(self, request: RecommendRequest, routed: Routed | None = None) -> ResolvedRequest:
        """The request's ids on the slot its user is routed to (or on `routed`'s slot: shadow
        scoring resolves the same request on the challenger). UnknownIdError for an id or
        category that slot's catalogue lacks."""
        routed = routed or self.route(request.user_id)
        slot = routed.slot
        return ResolvedRequest(
            request=request, variant=routed.variant, slot=slot,
            recent=slot.rows_of(request.recent_items, "recent_item_ids"),
            excluded=slot.rows_of(request.exclude_items, "exclude_item_ids"),
            include_genres=slot.genres_of(request.include_categories, "filters.include_categories"),
            exclude_genres=slot.genres_of(request.exclude_categories, "filters.exclude_categories"),
        )

    async def user_state(self, slot: ModelSlot, user_id: str, recent: IntArray,
                         reasons: list[str]) -> UserState:
        """Training-time history, then recorded events, then the request's recent items, cut to
        the slot's own history length, and the time of the latest of them (the request's recent
        items count as now). A failed event store appends `history_unavailable`."""
        users, row = slot.embedding.users, slot.user_rows.get(user_id)
        last_time: float | None = None
        if users is not None and row is not None:
            history = list(recent_rows(users.histories[row]))
            seen, attributes = users.seen(row), users.attributes[row]
            last_time = users.last_event_time(row)
        else:
            history, seen = [], np.zeros(0, dtype=np.int64)
            attributes = np.zeros(max(len(slot.embedding.attributes.names), 1), dtype=np.int64)
        if self.history is not None:
            try:
                events = await self.history.recent_events(user_id, slot.history_len)
                event_rows = [slot.item_rows[i] for i in events.items if i in slot.item_rows]
                history += event_rows
                if event_rows:
                    seen = np.union1d(seen, np.asarray(event_rows, dtype=np.int64))
                if events.last_time is not None:
                    last_time = max(events.last_time, last_time or 0.0)
            except StoreError:
                reasons.append("history_unavailable")
        history += recent.tolist()
        if recent.size:  # the request's recent items: events of the moment
            seen = np.union1d(seen, recent)
            last_time = time.time()
        return UserState(encode_history(history, slot.history_len), attributes, seen, last_time)

    async def user_vector(self, slot: ModelSlot, state: UserState,
                          reasons: list[str]) -> FloatArray:
        """[D] from the slot's user tower within its timeout; on failure the mean of recent (or
        popular) items, with `user_tower_timeout` or `user_tower_error` appended."""
        try:
            return await asyncio.wait_for(self._encode(slot, state), slot.tower_timeout_s)
        except (RecsysError, asyncio.TimeoutError) as error:
            reasons.append("user_tower_timeout" if isinstance(error, asyncio.TimeoutError)
                           else "user_tower_error")
            return fallback_user_vector(slot.catalog, slot.embedding.item_vectors, state.history)

    async def _encode(self, slot: ModelSlot, state: UserState) -> FloatArray:
        if self.vector_cache is None:
            return await self._tower_vector(slot, state)
        key = make_key("user_vector", {"embedding": slot.versions["embedding"]},
                       {"history": state.history.tolist(), "attributes": state.attributes.tolist()})
        vector, _ = await self.vector_cache.get_or_compute(
            "user_vector", key, partial(self._tower_vector, slot, state))
        return np.asarray(vector, dtype=np.float32)

    @staticmethod
    async def _tower_vector(slot: ModelSlot, state: UserState) -> FloatArray:
        return (await slot.user_tower.encode(state.history[None, :], state.attributes[None, :]))[0]
