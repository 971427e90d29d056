"""POST /recommend: cache → user state → user vector → retrieval → ranking → re-ranking.

One place decides degradation: every fallback is marked in the result and reported as an event.
"""
from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from recsys.errors import RequestError, RetrievalError
from recsys.experiments.shadow import ShadowScorer
from recsys.experiments.shadow_records import ScoredList
from recsys.features import recent_rows, user_ranker_inputs
from recsys.models.policy import item_to_item_vector
from recsys.models.registry_client import CHALLENGER, CHAMPION
from recsys.pipeline.explain import add_explanations
from recsys.pipeline.precomputed_lists import TierThenCompute
from recsys.pipeline.request import RecommendRequest
from recsys.pipeline.reranking import rerank
from recsys.pipeline.resolver import (
    RequestResolver,
    ResolvedRequest,
    Routed,
    ServedModels,
    UserState,
)
from recsys.pipeline.results import items, result_key, scored_list
from recsys.pipeline.retrieval import AnnSource, Candidates, RetrievalQuery
from recsys.pipeline.slots import ModelSlot
from recsys.stores.cache import ResultCache
from recsys.stores.precomputed import PrecomputedTier
from recsys.telemetry import Telemetry

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]
CACHED_LEVELS = ("l1", "l2")
WARMUP_USER = "__warmup__"
RECENT_REQUESTS = 32  # kept to warm a new set of models with
DEFAULT_K = 10  # /recommend's default k: what a cache prefill computes


@dataclass(frozen=True)
class PipelineOptions:
    ranked_candidates: int
    diversity: float
    max_per_category: int
    budget_s: float
    # A degraded result lives this long in the cache (0: never cached). Short, so a recovered
    # model serves again soon; not 0, so an overloaded service answers repeats from the cache
    # instead of recomputing, degrading further and never catching up.
    degraded_ttl_s: float = 5.0


class OutcomeRecorder(Protocol):
    """Told what each request's variant served (a canary counts it, recsys/app/canary_control.py)."""

    def served(self, variant: str, user_id: str, result: dict[str, Any], latency_ms: float,
               computed: bool) -> None: ...  # computed: by the variant's models, not cached

    def failed(self, variant: str) -> None: ...


@dataclass(frozen=True)
class Answer:
    """`result` is the cached object itself (the same dict on every L1 hit: never modify it);
    `fields` are this request's own: variant, cache level, request id and latency."""

    result: dict[str, Any]
    fields: dict[str, Any]

    @property
    def from_cache(self) -> bool:
        return self.fields["cache"] in CACHED_LEVELS


class RecommendPipeline:
    def __init__(self, resolver: RequestResolver, options: PipelineOptions,
                 cache: ResultCache | None, telemetry: Telemetry,
                 shadow: ShadowScorer | None = None,
                 precomputed: PrecomputedTier | None = None) -> None:
        self.resolver, self.options = resolver, options
        self.cache, self.telemetry, self.shadow = cache, telemetry, shadow
        self.precomputed = precomputed  # read on a cache miss before computing
        self.recent: deque[RecommendRequest] = deque(maxlen=RECENT_REQUESTS)
        self.outcomes: OutcomeRecorder | None = None

    async def warm(self, models: ServedModels, rounds: int = 1) -> None:
        """Run a new user's request and the last ones this worker served on every slot of
        `models`, without the cache: loads lazy state (ONNX arenas, FAISS) before the models
        take traffic (at start-up before /readyz says yes, at a swap before the swap). Stage
        timings and the pipeline's own events (exposures, candidates, fallbacks) are not
        reported: those metrics describe served requests. Components report their own failures
        (a source or ranker error) as always."""
        silent = Telemetry()
        for alias, slot in models.slots.items():
            # a new user (the cold-start path) and one with events enough for the ranking
            # policy to take them through every model and source
            rows = slot.catalog.popular_rows[:slot.policy.events_to_rank]
            popular = tuple(str(i) for i in slot.catalog.item_ids[rows])
            requests = [RecommendRequest(WARMUP_USER, 10),
                        RecommendRequest(WARMUP_USER, 10, recent_items=popular), *self.recent]
            for request in requests:
                try:
                    resolved = self.resolver.resolve(request, Routed(alias, slot))
                except RequestError:  # an id the new catalogue does not have
                    continue
                for _ in range(rounds):
                    await self.compute(resolved, time.perf_counter(), silent)

    async def prefill(self, slot: ModelSlot, users: int, seconds: float) -> int:
        """Compute and cache the results of the slot's `users` most active known users (a
        request with the default k and no context), for at most `seconds`: a new champion then
        takes traffic with their answers cached. Returns how many were cached."""
        if self.cache is None:
            return 0
        deadline, done, silent = time.perf_counter() + seconds, 0, Telemetry()
        for user in slot.most_active_users(users):
            if time.perf_counter() > deadline:
                break
            request = RecommendRequest(user, DEFAULT_K)
            resolved = self.resolver.resolve(request, Routed(slot.alias, slot))
            await self.cache.get_or_compute(
                "results", result_key(slot, request),
                partial(self.compute, resolved, time.perf_counter(), silent),
                user_id=user, ttl_s=self._result_ttl)
            done += 1
        return done

    async def respond(self, request: RecommendRequest) -> Answer:
        start = time.perf_counter()
        request_id = uuid.uuid4().hex
        resolved = self.resolver.resolve(request)
        self.recent.append(request)  # what a new set of models is warmed with
        self.telemetry.event("exposure", variant=resolved.variant)  # only requests served
        try:
            result, level = await self._cached_result(resolved, start)
        except Exception:
            if self.outcomes is not None:
                self.outcomes.failed(resolved.variant)
            raise
        latency_ms = round((time.perf_counter() - start) * 1000, 3)
        if self.outcomes is not None:
            self.outcomes.served(resolved.variant, request.user_id, result, latency_ms,
                                 computed=level in ("miss", "none"))
        if self.shadow is not None and resolved.slot.alias == CHAMPION and \
                CHALLENGER in self.resolver.slots and self.shadow.should_shadow(request_id):
            await self._submit_shadow(self.shadow, request_id, request, result, latency_ms)
        return Answer(result, {"variant": resolved.variant, "cache": level,
                               "request_id": request_id, "latency_ms": latency_ms})

    async def _cached_result(self, resolved: ResolvedRequest,
                             start: float) -> tuple[dict[str, Any], str]:
        """(result, cache level): "none" without a cache, else "l1", "l2", "precomputed" (the
        batch job's list) or "miss"."""
        if self.cache is None:
            return await self.compute(resolved, start), "none"
        request = resolved.request
        t = time.perf_counter()
        fill = TierThenCompute(self.precomputed, resolved, partial(self.compute, resolved, start))
        result, level = await self.cache.get_or_compute(
            "results", result_key(resolved.slot, request), fill,
            user_id=request.user_id, ttl_s=self._result_ttl)
        answered = "precomputed" if fill.served else level
        if answered != "miss":
            self.telemetry.observe("cache", time.perf_counter() - t)
        return result, answered

    def _result_ttl(self, result: dict[str, Any]) -> float | None:
        return self.options.degraded_ttl_s if result["degraded"] else None

    async def compute(self, resolved: ResolvedRequest, start: float,
                      telemetry: Telemetry | None = None) -> dict[str, Any]:
        """The result for one resolved request; its stage timings and events go to
        `telemetry` (by default the pipeline's own)."""
        telemetry = telemetry or self.telemetry
        slot, request = resolved.slot, resolved.request
        reasons: list[str] = []
        t = time.perf_counter()
        state = await self.resolver.user_state(slot, request.user_id, resolved.recent, reasons)
        telemetry.observe("history", time.perf_counter() - t)
        history = recent_rows(state.history)
        path = slot.policy.path_for(history.size)
        if path == "popularity":
            return await self._cold_start(resolved, state, reasons, telemetry)
        t = time.perf_counter()
        if path == "item_to_item":
            user = item_to_item_vector(slot.embedding.item_vectors, history)
        else:
            user = await self.resolver.user_vector(slot, state, reasons)
        telemetry.observe("user_tower", time.perf_counter() - t)
        t = time.perf_counter()
        candidates = await self._retrieve(resolved, user, state, reasons, ranked=path == "ranker")
        telemetry.observe("retrieval", time.perf_counter() - t)
        telemetry.event("candidates", count=str(len(candidates.items)))
        ranked = self._to_rank(resolved, candidates, state)
        if path != "ranker":  # in retrieval order: validation chose it over the ranker here
            telemetry.event("ranking_path", path=path)
            return await self._shown(resolved, ranked, ranked.similarity, path, reasons,
                                     telemetry)
        t = time.perf_counter()
        features = user_ranker_inputs(user, state.history, ranked.items, slot.embedding.item_vectors,
                                      slot.catalog, state.context(request.context), slot.scaler)
        telemetry.observe("features", time.perf_counter() - t)
        t = time.perf_counter()
        remaining = self.options.budget_s - (time.perf_counter() - start)
        outcome = await slot.ranker.rank(features, ranked.similarity, timeout_s=remaining)
        if outcome.reason:
            reasons.append(outcome.reason)
        telemetry.observe("ranking", time.perf_counter() - t)
        return await self._shown(resolved, ranked, outcome.scores, outcome.ranker, reasons,
                                 telemetry, features)

    async def _cold_start(self, resolved: ResolvedRequest, state: UserState, reasons: list[str],
                          telemetry: Telemetry) -> dict[str, Any]:
        """A user without history (unknown, or no event yet): the most popular items, filtered
        and diversified like any list. The two-tower's vector of an empty history ranks the
        catalogue far below popularity (the cold-start curve, training/cold_start.py)."""
        telemetry.event("cold_start")
        ranked = self._to_rank(resolved, resolved.slot.popular, state)
        return await self._shown(resolved, ranked, ranked.similarity, "popularity", reasons,
                                 telemetry)

    async def _shown(self, resolved: ResolvedRequest, ranked: Candidates, scores: FloatArray,
                     ranker: str, reasons: list[str], telemetry: Telemetry,
                     features: FloatArray | None = None) -> dict[str, Any]:
        """The result: the k items to show of the `ranked` candidates by `scores`, re-ranked,
        each explained when the request asks (`features`: the ranker's inputs, when it ran)."""
        slot, request = resolved.slot, resolved.request
        t = time.perf_counter()
        order = rerank(scores, ranked.items, slot.embedding.item_vectors, slot.catalog,
                       request.k, self.options.diversity, self.options.max_per_category)
        telemetry.observe("reranking", time.perf_counter() - t)
        for reason in reasons:
            telemetry.event("fallback", reason=reason.split(":")[0])
        result = {"user_id": request.user_id, "items": items(slot, ranked, scores, order),
                  "model_versions": slot.versions, "ranker": ranker,
                  "degraded": bool(reasons), "degraded_reasons": reasons}
        if request.explain:
            await add_explanations(result, ranked, slot.item_rows, features, slot.ranker)
        return result

    async def _retrieve(self, resolved: ResolvedRequest, user: FloatArray, state: UserState,
                        reasons: list[str], ranked: bool) -> Candidates:
        """The candidates to rank, or for an unranked list (shown in similarity to `user`) the
        ANN source's alone: the other sources could add to it only items the ANN search missed,
        and their searches were most of a miss's retrieval time. Of the nearest items, only the
        number ranked plus those the filters may drop can be ranked (`needed`)."""
        slot, dropped = resolved.slot, resolved.most_filtered(state.seen)
        only = None if ranked else (AnnSource.name,)
        needed = None if dropped is None else self._depth(slot) + dropped
        try:
            candidates = await slot.retriever.retrieve(
                RetrievalQuery(user, recent_rows(state.history), needed), only)
        except RetrievalError:
            candidates = slot.popular.scored_by(slot.embedding.item_vectors, user)
            reasons.append("retrieval_failed")
        reasons += [f"source_failed:{name}" for name in candidates.failed]
        return candidates

    def _to_rank(self, resolved: ResolvedRequest, candidates: Candidates,
                 state: UserState) -> Candidates:
        """Candidates left after the seen, excluded and category filters, cut to _depth."""
        kept = resolved.filtered(candidates, state.seen)
        return kept.select(np.arange(min(len(kept.items), self._depth(resolved.slot))))

    def _depth(self, slot: ModelSlot) -> int:
        """Candidates the ranker scores: the slot's policy's, at most RECSYS_RANKED_CANDIDATES."""
        return slot.policy.depth(self.options.ranked_candidates)

    async def _submit_shadow(self, shadow: ShadowScorer, request_id: str,
                             request: RecommendRequest, served: dict[str, Any],
                             latency_ms: float) -> None:
        """Queue the challenger on the same request, its ids resolved on its own catalogue;
        never awaited on the request path."""
        await shadow.submit(request_id, request.user_id, scored_list(served, latency_ms),
                            ShadowCall(self, request), k=request.k)


@dataclass(frozen=True)
class ShadowCall:
    """The challenger's answer to one request, computed when a shadow worker gets to it."""

    pipeline: RecommendPipeline
    request: RecommendRequest

    async def __call__(self) -> ScoredList:
        challenger = self.pipeline.resolver.slots.get(CHALLENGER)
        if challenger is None:  # the challenger was retired while this call waited its turn
            raise LookupError("no challenger is served any more")
        resolved = self.pipeline.resolver.resolve(self.request, Routed("shadow", challenger))
        start = time.perf_counter()
        result = await self.pipeline.compute(resolved, start)
        return scored_list(result, (time.perf_counter() - start) * 1000)
