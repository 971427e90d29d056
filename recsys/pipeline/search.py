"""POST /search: cache → query understanding → BM25 on the loop, the item space in a worker
thread and the user's taste as a task, each retriever under its own budget → weighted
reciprocal rank fusion → the learned order of the first fused candidates (where training chose
it, recsys/search/learned.py; if it fails, the fused order, marked degraded) → one page.

BM25 always answers (it is in memory and cannot time out); if the item-space retriever or the
personalisation fails or runs out of time, the page is fused without it and marked degraded
with the reason, as /recommend marks its fallbacks.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from recsys.errors import RecsysError, UnavailableError
from recsys.features import PAD, encode_history
from recsys.pipeline.recommend import Answer
from recsys.pipeline.resolver import RequestResolver, UserState
from recsys.pipeline.search_request import SearchRequest
from recsys.pipeline.search_results import search_result
from recsys.pipeline.slots import ModelSlot
from recsys.search.engine import SearchEngine
from recsys.search.fusion import FusionRule, Ranked, personal_list
from recsys.search.index import BoolArray
from recsys.search.query import ParsedQuery
from recsys.search.text import normalise
from recsys.stores.cache import ResultCache
from recsys.stores.cache_keys import make_key
from recsys.telemetry import Telemetry

T = TypeVar("T")
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


class SearchUnavailableError(UnavailableError):
    """The serving model set was built without search (RECSYS_SEARCH=false)."""


@dataclass(frozen=True)
class SearchOptions:
    fusion: FusionRule
    vector_timeout_s: float
    personal_timeout_s: float
    degraded_ttl_s: float = 5.0  # as PipelineOptions.degraded_ttl_s


@dataclass(frozen=True)
class Taste:
    vector: FloatArray | None  # None: the user has no history to personalise with
    reasons: list[str]  # fallbacks taken on the way (history_unavailable, user_tower_error)


@dataclass(frozen=True)
class SearchScope:
    """A request resolved on the slot that serves it: its ids as rows, its categories as genre
    columns."""

    request: SearchRequest
    slot: ModelSlot
    engine: SearchEngine
    recent: IntArray
    categories: tuple[int, ...]


class SearchPipeline:
    def __init__(self, resolver: RequestResolver, options: SearchOptions,
                 cache: ResultCache | None, telemetry: Telemetry) -> None:
        self.resolver, self.options = resolver, options
        self.cache, self.telemetry = cache, telemetry
        # Own threads for the item-space retriever: its ONNX run and FAISS search release the
        # GIL, so it overlaps BM25 on the loop, and a hung one cannot hold the loop.
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="search")

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def respond(self, request: SearchRequest) -> Answer:
        start = time.perf_counter()
        scope = self.resolve(request)
        if self.cache is None:
            result, level = await self.compute(scope), "none"
        else:
            key = make_key("search", scope.slot.versions,
                           request.cache_fields(normalise(request.query)))
            result, level = await self.cache.get_or_compute(
                "results", key, partial(self.compute, scope), user_id=request.user_id,
                ttl_s=self._result_ttl)
        latency_ms = round((time.perf_counter() - start) * 1000, 3)
        return Answer(result, {"cache": level, "request_id": uuid.uuid4().hex,
                               "latency_ms": latency_ms})

    def resolve(self, request: SearchRequest) -> SearchScope:
        """The request on the champion's slot; UnknownIdError for an id or category its
        catalogue lacks."""
        slot = self.resolver.champion
        if slot.search is None:
            raise SearchUnavailableError("this model set was loaded without search "
                                         "(RECSYS_SEARCH=false)")
        genres = slot.genres_of(request.categories, "filters.categories")
        return SearchScope(request, slot, slot.search,
                           slot.rows_of(request.recent_items, "recent_item_ids"),
                           () if genres is None else tuple(genres.tolist()))

    def _result_ttl(self, result: dict[str, Any]) -> float | None:
        return self.options.degraded_ttl_s if result["degraded"] else None

    async def compute(self, scope: SearchScope) -> dict[str, Any]:
        engine, request = scope.engine, scope.request
        reasons: list[str] = []
        t = time.perf_counter()
        query = engine.parser.parse(request.query)
        allowed = engine.allowed(query, scope.categories, request.years)
        self.observe("search_parse", t)
        taste = self._start_taste(scope) if query.understood else None
        nearby = self._start_vectors(engine, query, allowed)
        t = time.perf_counter()
        lists = {"bm25": engine.text.retrieve(query, allowed)}
        self.observe("search_bm25", t)
        if nearby is not None:
            found = await self._within_budget(nearby, "search_vector", reasons)
            if found is not None:
                lists["vector"] = found
        user = await self._taste(taste, reasons) if taste is not None else None
        t = time.perf_counter()
        if user is not None:
            lists["personal"] = personal_list(lists, scope.slot.embedding.item_vectors, user)
        fused = self.options.fusion.fuse({name: r.rows for name, r in lists.items()},
                                         scope.slot.catalog.popularity)
        self.observe("search_fusion", t)
        ranking = "fusion"
        if engine.ranker is not None and fused.rows.size:
            t = time.perf_counter()
            try:
                fused = engine.ranker.reorder(fused, lists, query,
                                              scope.slot.embedding.item_vectors, user,
                                              scope.slot.catalog.popularity)
                ranking = "learned"
            except RecsysError:
                reasons.append("search_ranker_error")  # the fused order answers
            self.observe("search_ranking", t)
        self.report(query, fused.rows.size, user is not None, reasons)
        return search_result(scope.slot, request, query, fused, user is not None, reasons,
                             ranking)

    def _start_vectors(self, engine: SearchEngine, query: ParsedQuery,
                       allowed: BoolArray | None) -> asyncio.Future[Ranked] | None:
        """The item-space retriever, started in a worker thread under its budget; None for a
        query with nothing understood (its nearest items would be noise: a query that matches
        nothing answers an empty page)."""
        if not query.understood:
            return None
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self.executor, engine.vectors.retrieve, query, allowed)
        return asyncio.ensure_future(asyncio.wait_for(work, self.options.vector_timeout_s))

    async def _within_budget(self, work: asyncio.Future[T], stage: str,
                             reasons: list[str]) -> T | None:
        """What `work` (already under its timeout) gives, timed as `stage`; None, with the
        reason "<stage>_timeout" or "<stage>_error" added, when it ran out of time or failed."""
        t = time.perf_counter()
        try:
            return await work
        except asyncio.TimeoutError:
            reasons.append(f"{stage}_timeout")
        except RecsysError:
            reasons.append(f"{stage}_error")
        finally:
            self.observe(stage, t)
        return None

    def _start_taste(self, scope: SearchScope) -> asyncio.Future[Taste] | None:
        """The user's vector, computed beside the retrievers under its budget; None without a
        user or recent items."""
        if scope.request.user_id is None and scope.recent.size == 0:
            return None
        return asyncio.ensure_future(asyncio.wait_for(self._taste_of(scope),
                                                      self.options.personal_timeout_s))

    async def _taste_of(self, scope: SearchScope) -> Taste:
        reasons: list[str] = []
        state = await self._user_state(scope, reasons)
        if not np.any(state.history != PAD):
            return Taste(None, reasons)  # no history: nothing to personalise with
        return Taste(await self.resolver.user_vector(scope.slot, state, reasons), reasons)

    async def _user_state(self, scope: SearchScope, reasons: list[str]) -> UserState:
        slot, request = scope.slot, scope.request
        if request.user_id is not None:
            return await self.resolver.user_state(slot, request.user_id, scope.recent, reasons)
        attributes = np.zeros(max(len(slot.embedding.attributes.names), 1), dtype=np.int64)
        return UserState(encode_history(scope.recent.tolist(), slot.history_len), attributes,
                         scope.recent)

    async def _taste(self, taste: asyncio.Future[Taste], reasons: list[str]) -> FloatArray | None:
        """The user's vector (with the fallbacks it took, e.g. a failed user tower's
        mean-of-items vector, in `reasons`); None when personalisation is off for this request."""
        found = await self._within_budget(taste, "search_personal", reasons)
        if found is None:
            return None
        reasons += found.reasons
        return found.vector

    def observe(self, stage: str, since: float) -> None:
        self.telemetry.observe(stage, time.perf_counter() - since)

    def report(self, query: ParsedQuery, results: int, personalised: bool,
               reasons: list[str]) -> None:
        self.telemetry.event("search", personalised=str(personalised).lower(),
                             result="hits" if results else "empty")
        for _ in query.corrections:
            self.telemetry.event("search_correction")
        for reason in reasons:
            self.telemetry.event("fallback", reason=reason.split(":")[0])
