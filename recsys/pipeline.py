"""The request path: cache → history → user vector → retrieval → ranking → re-ranking.

One place decides degradation: every fallback is marked in the response and reported as an event.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from recsys.cache import ResultCache
from recsys.cache_keys import make_key
from recsys.errors import CacheError, RecsysError, RetrievalError
from recsys.events import Telemetry
from recsys.experiments import Router
from recsys.fallbacks import fallback_user_vector, popularity_candidates
from recsys.features import encode_history, recent_rows, user_ranker_inputs
from recsys.history import HistoryStore
from recsys.request import InvalidRequestError, RecommendRequest
from recsys.reranking import filter_candidates, rerank
from recsys.retrieval import Candidates, RetrievalQuery
from recsys.shadow import ScoredList, ShadowScorer
from recsys.slots import ModelSlot

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class PipelineOptions:
    ranked_candidates: int
    diversity: float
    max_per_category: int
    budget_s: float
    history_len: int
    # Cache user vectors too (kind "user_vector", keyed by the history itself): worth a Redis
    # round trip only when the user tower is a process hop away (topology "services").
    cache_user_vectors: bool = False
    tower_timeout_s: float = 0.05
    # A degraded result lives this long in the cache (0: never cached). Short, so a recovered
    # model serves again soon; not 0, so an overloaded service answers repeats from the cache
    # instead of recomputing, degrading further and never catching up.
    degraded_ttl_s: float = 5.0


class Recommender:
    def __init__(self, slots: Mapping[str, ModelSlot], router: Router, options: PipelineOptions,
                 cache: ResultCache | None, history: HistoryStore | None,
                 telemetry: Telemetry | None = None, shadow: ShadowScorer | None = None) -> None:
        if "champion" not in slots:
            raise ValueError(f"a champion model slot is required, got {sorted(slots)}")
        self.slots, self.router, self.options = dict(slots), router, options
        self.cache, self.history = cache, history
        self.telemetry = telemetry or Telemetry()
        self.shadow = shadow if "challenger" in slots else None

    async def warmup(self, rounds: int = 3) -> None:
        """Run the full path (no cache) for a new user on every slot: loads lazy state (ONNX
        arenas, FAISS) before /readyz says yes. Its stage timings and the pipeline's own events
        (exposures, candidates, fallbacks) are not reported: those metrics describe served
        requests. Components report their own failures (a source or ranker error) as always."""
        silent = Telemetry()
        for slot in self.slots.values():
            for _ in range(rounds):
                await self._compute(slot, RecommendRequest("__warmup__", 10),
                                    np.zeros(0, np.int64), np.zeros(0, np.int64), None, None,
                                    time.perf_counter(), silent)

    # ---- lookups shared by every endpoint -------------------------------------------------
    def slot_for(self, user_id: str) -> tuple[str, ModelSlot]:
        variant = self.router.variant_for(user_id)
        slot = self.slots.get(variant.alias)
        if slot is None:
            self.telemetry.event("variant_unavailable", variant=variant.name)
            return variant.name, self.slots["champion"]
        return variant.name, slot

    @staticmethod
    def rows(slot: ModelSlot, item_ids: tuple[str, ...], field_name: str) -> IntArray:
        if not item_ids:  # most requests: no recent or excluded items
            return np.zeros(0, dtype=np.int64)
        unknown = [i for i in item_ids if i not in slot.item_rows]
        if unknown:
            shown = ", ".join(repr(i) for i in unknown[:5])
            raise InvalidRequestError(field_name, f"unknown item id(s) {shown}"
                                      f"{' and more' if len(unknown) > 5 else ''}")
        return np.fromiter((slot.item_rows[i] for i in item_ids), dtype=np.int64, count=len(item_ids))

    @staticmethod
    def genres(slot: ModelSlot, names: tuple[str, ...], field_name: str) -> IntArray | None:
        if not names:
            return None
        unknown = [n for n in names if n not in slot.genre_index]
        if unknown:
            raise InvalidRequestError(field_name, f"unknown categor(ies) {unknown}; known: "
                                      f"{sorted(slot.genre_index)}")
        return np.asarray([slot.genre_index[n] for n in names], dtype=np.int64)

    async def user_state(self, slot: ModelSlot, user_id: str, recent: IntArray,
                         reasons: list[str]) -> tuple[IntArray, IntArray, IntArray]:
        """(padded history [H], attribute ids [A], rows the user has seen)."""
        users, row = slot.embedding.users, slot.user_rows.get(user_id)
        if users is not None and row is not None:
            history = list(recent_rows(users.histories[row]))
            seen, attributes = users.seen(row), users.attributes[row]
        else:
            history, seen = [], np.zeros(0, dtype=np.int64)
            attributes = np.zeros(max(len(slot.embedding.attributes.names), 1), dtype=np.int64)
        if self.history is not None:
            try:
                events = await self.history.recent_items(user_id, self.options.history_len)
                event_rows = [slot.item_rows[i] for i in events if i in slot.item_rows]
                history += event_rows
                seen = np.union1d(seen, np.asarray(event_rows, dtype=np.int64))
            except CacheError:
                reasons.append("history_unavailable")
        history += recent.tolist()
        seen = np.union1d(seen, recent)
        return encode_history(history, self.options.history_len), attributes, seen

    # ---- POST /recommend ------------------------------------------------------------------
    async def recommend(self, request: RecommendRequest) -> dict[str, Any]:
        result, fields = await self.respond(request)
        return {**result, **fields}

    async def respond(self, request: RecommendRequest) -> tuple[dict[str, Any], dict[str, Any]]:
        """(result, this request's own fields): the result is the cached object itself (the same
        dict on every L1 hit: never modify it), the fields are variant, cache level, request id
        and latency. recommend() merges them; the service encodes them (ResponseEncoder)."""
        start = time.perf_counter()
        request_id = uuid.uuid4().hex
        variant, slot = self.slot_for(request.user_id)
        recent = self.rows(slot, request.recent_items, "recent_item_ids")
        excluded = self.rows(slot, request.exclude_items, "exclude_item_ids")
        include = self.genres(slot, request.include_categories, "filters.include_categories")
        exclude = self.genres(slot, request.exclude_categories, "filters.exclude_categories")
        self.telemetry.event("exposure", variant=variant)  # only requests that will be served

        async def compute() -> dict[str, Any]:
            return await self._compute(slot, request, recent, excluded, include, exclude, start)

        level = "none"
        if self.cache is None:
            result = await compute()
        else:
            key = self.cache_key(slot, request)
            t0 = time.perf_counter()
            result, level = await self.cache.get_or_compute("results", key, compute,
                                                            user_id=request.user_id,
                                                            ttl_s=self._result_ttl)
            if level != "miss":
                self.telemetry.observe("cache", time.perf_counter() - t0)
        latency_ms = round((time.perf_counter() - start) * 1000, 3)
        if self.shadow is not None and slot.alias == "champion" and \
                self.shadow.should_shadow(request_id):
            await self._submit_shadow(self.shadow, request_id, request, result, latency_ms,
                                      (recent, excluded, include, exclude))
        return result, {"variant": variant, "cache": level, "request_id": request_id,
                        "latency_ms": latency_ms}

    def _result_ttl(self, result: dict[str, Any]) -> float | None:
        return self.options.degraded_ttl_s if result["degraded"] else None

    async def _submit_shadow(self, shadow: ShadowScorer, request_id: str, request: RecommendRequest,
                             served: dict[str, Any], latency_ms: float,
                             resolved: tuple[IntArray, IntArray, IntArray | None, IntArray | None]) -> None:
        """Queue the challenger on the same request; never awaited on the request path."""
        challenger = self.slots["challenger"]

        async def score_challenger() -> ScoredList:
            t = time.perf_counter()
            result = await self._compute(challenger, request, *resolved, time.perf_counter())
            return scored_list(result, (time.perf_counter() - t) * 1000)

        await shadow.submit(request_id, request.user_id, scored_list(served, latency_ms),
                            score_challenger, k=request.k)

    @staticmethod
    def cache_key(slot: ModelSlot, request: RecommendRequest) -> str:
        """make_key of the request, computed once per distinct request and slot: hashing the
        frozen request costs a fraction of make_key's JSON and blake2b."""
        key = slot.result_keys.get(request)
        if key is None:
            key = slot.result_keys[request] = make_key("results", slot.versions,
                                                       request.cache_fields())
        return key

    async def resilient_user_vector(self, slot: ModelSlot, history: IntArray, attributes: IntArray,
                                    reasons: list[str]) -> FloatArray:
        """The user vector under a timeout; on failure the mean of recent (or popular) items."""
        try:
            return await asyncio.wait_for(self.user_vector(slot, history, attributes),
                                          self.options.tower_timeout_s)
        except (RecsysError, asyncio.TimeoutError) as error:
            reasons.append("user_tower_timeout" if isinstance(error, asyncio.TimeoutError)
                           else "user_tower_error")
            return fallback_user_vector(slot, history)

    async def user_vector(self, slot: ModelSlot, history: IntArray, attributes: IntArray) -> FloatArray:
        """[D] user vector; cached by (embedding version, history, attributes) when enabled."""
        async def encode() -> FloatArray:
            return (await slot.user_tower(history[None, :], attributes[None, :]))[0]

        if self.cache is None or not self.options.cache_user_vectors:
            return await encode()
        key = make_key("user_vector", {"embedding": slot.versions["embedding"]},
                       {"history": history.tolist(), "attributes": attributes.tolist()})
        vector, _ = await self.cache.get_or_compute("user_vector", key, encode)
        return np.asarray(vector, dtype=np.float32)

    async def _compute(self, slot: ModelSlot, request: RecommendRequest, recent: IntArray,
                       excluded: IntArray, include: IntArray | None, exclude: IntArray | None,
                       start: float, telemetry: Telemetry | None = None) -> dict[str, Any]:
        """The result for one request on one slot; its stage timings and events go to
        `telemetry` (by default the pipeline's own)."""
        telemetry = telemetry or self.telemetry
        reasons: list[str] = []
        t = time.perf_counter()
        history, attributes, seen = await self.user_state(slot, request.user_id, recent, reasons)
        telemetry.observe("history", time.perf_counter() - t)
        t = time.perf_counter()
        user = await self.resilient_user_vector(slot, history, attributes, reasons)
        telemetry.observe("user_tower", time.perf_counter() - t)
        t = time.perf_counter()
        try:
            candidates = await slot.retriever.retrieve(RetrievalQuery(user, recent_rows(history)))
        except RetrievalError:
            candidates = popularity_candidates(slot, user)
            reasons.append("retrieval_failed")
        reasons += [f"source_failed:{name}" for name in candidates.failed]
        telemetry.observe("retrieval", time.perf_counter() - t)
        telemetry.event("candidates", count=str(len(candidates.items)))
        t = time.perf_counter()
        candidates = filter_candidates(candidates, np.union1d(seen, excluded), slot.embedding.catalog,
                                       include, exclude)
        ranked = candidates.select(np.arange(min(len(candidates.items),
                                                 self.options.ranked_candidates)))
        features = user_ranker_inputs(user, history, ranked.items, slot.embedding.item_vectors,
                                      slot.embedding.catalog, request.context, slot.scaler)
        telemetry.observe("features", time.perf_counter() - t)
        t = time.perf_counter()
        remaining = self.options.budget_s - (time.perf_counter() - start)
        outcome = await slot.ranker.rank(features, ranked.similarity, timeout_s=remaining)
        if outcome.reason:
            reasons.append(outcome.reason)
        telemetry.observe("ranking", time.perf_counter() - t)
        t = time.perf_counter()
        order = rerank(outcome.scores, ranked.items, slot.embedding.item_vectors,
                       slot.embedding.catalog, request.k, self.options.diversity,
                       self.options.max_per_category)
        telemetry.observe("reranking", time.perf_counter() - t)
        for reason in reasons:
            telemetry.event("fallback", reason=reason.split(":")[0])
        return {"user_id": request.user_id, "items": self.items(slot, ranked, outcome.scores, order),
                "model_versions": slot.versions, "ranker": outcome.ranker,
                "degraded": bool(reasons), "degraded_reasons": reasons}

    @staticmethod
    def items(slot: ModelSlot, ranked: Candidates, scores: FloatArray,
              order: IntArray) -> list[dict[str, Any]]:
        catalog = slot.embedding.catalog
        return [{"item_id": str(catalog.item_ids[ranked.items[p]]),
                 "title": str(catalog.titles[ranked.items[p]]),
                 "score": round(float(scores[p]), 6), "rank": rank + 1,
                 "sources": ranked.sources_of(int(p))}
                for rank, p in enumerate(order)]


def scored_list(result: dict[str, Any], latency_ms: float) -> ScoredList:
    return ScoredList(result["model_versions"], [i["item_id"] for i in result["items"]],
                      [i["score"] for i in result["items"]], latency_ms)


