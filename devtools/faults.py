"""Fault injection for tests and game days: RECSYS_FAULTS="ranker:error,ann:timeout" makes the
ranker raise and the ANN source hang past its timeout. Not part of the runtime package or the
Bento: service.py loads it only when RECSYS_FAULTS names stages (serving/fault_injection.py).

Stages: user_tower, ranker, fallback (the fallback ranker has no timeout: no "timeout" there),
ann, popular, item2item, search_vector (/search's item-space retriever) and search_ranker
(/search's learned order; no timeout either). Modes: "error" raises, "timeout" hangs past any
stage timeout, "slow" adds SLOW_S and goes on. An entry applies to every model alias, or to one when prefixed with it:
"challenger/ranker:error" makes a bad challenger (a canary's guards must roll it back). Faults of
the event store are real ones in the tests: a stopped or paused Redis.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from recsys.errors import StageError
from recsys.pipeline.retrieval import CandidateSource, RetrievalQuery
from recsys.pipeline.scorers import Scorer
from recsys.pipeline.towers import UserTower
from recsys.search.fusion import Fused, Ranked
from recsys.search.learned import SearchRanking
from recsys.search.query import ParsedQuery
from recsys.search.retrievers import QueryRetriever

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
STAGES = ("user_tower", "ranker", "fallback", "ann", "popular", "item2item", "search_vector",
          "search_ranker")
MODES = ("error", "timeout", "slow")
UNTIMED_STAGES = ("fallback", "search_ranker")  # a hang there would hang the request: only "error"
HANG_S = 5.0  # longer than any stage timeout
SLOW_S = 0.02  # well past a p99 guard's margin, well within the stage timeouts
EVERY_ALIAS = "*"


class InjectedFault(StageError):
    """Raised by a stage that RECSYS_FAULTS told to fail."""


async def inject(stage: str, mode: str) -> None:
    if mode == "error":
        raise InjectedFault(f"injected failure in {stage}")
    await asyncio.sleep(SLOW_S if mode == "slow" else HANG_S)


class FaultInjectingTower:
    def __init__(self, inner: UserTower, mode: str) -> None:
        self.inner, self.mode = inner, mode

    async def encode(self, history: IntArray, attributes: IntArray) -> FloatArray:
        await inject("user_tower", self.mode)
        return await self.inner.encode(history, attributes)


class FaultInjectingScorer:
    def __init__(self, inner: Scorer, stage: str, mode: str) -> None:
        self.inner, self.stage, self.mode = inner, stage, mode

    async def score(self, features: FloatArray) -> FloatArray:
        await inject(self.stage, self.mode)
        return await self.inner.score(features)


class FaultInjectingSource:
    """Runs in a worker thread, never inline: an injected hang must run where the retrieval
    timeout cuts it off, as a blocking source's would."""

    inline = False

    def __init__(self, inner: CandidateSource, mode: str) -> None:
        self.inner, self.mode, self.name = inner, mode, inner.name

    def __call__(self, query: RetrievalQuery) -> IntArray:
        if self.mode == "error":
            raise InjectedFault(f"injected failure in {self.name}")
        time.sleep(SLOW_S if self.mode == "slow" else HANG_S)
        return self.inner(query)


class FaultInjectingSearchRetriever:
    """/search's item-space retriever, failing: it runs in the search's worker thread, where
    an injected hang is cut off by its timeout as a slow ONNX run or FAISS search would be."""

    def __init__(self, inner: QueryRetriever, mode: str) -> None:
        self.inner, self.mode, self.name = inner, mode, inner.name

    def retrieve(self, query: ParsedQuery, allowed: BoolArray | None) -> Ranked:
        if self.mode == "error":
            raise InjectedFault(f"injected failure in {self.name}")
        time.sleep(SLOW_S if self.mode == "slow" else HANG_S)
        return self.inner.retrieve(query, allowed)


class FaultInjectingSearchRanker:
    """/search's learned order, failing: it runs on the event loop (a few hundred µs), so a
    failure is an error, or a slow model."""

    def __init__(self, inner: SearchRanking, mode: str) -> None:
        self.inner, self.mode = inner, mode

    def reorder(self, fused: Fused, lists: Mapping[str, Ranked], query: ParsedQuery,
                item_vectors: FloatArray, user: FloatArray | None,
                popularity: FloatArray) -> Fused:
        if self.mode == "error":
            raise InjectedFault("injected failure in search_ranker")
        time.sleep(SLOW_S)
        return self.inner.reorder(fused, lists, query, item_vectors, user, popularity)


@dataclass(frozen=True)
class FaultPlan:
    """Which stages fail and how, per model alias; wraps the adapters of those stages (a
    StageWrapper)."""

    modes: dict[tuple[str, str], str] = field(default_factory=dict)  # (alias or *, stage) -> mode

    @classmethod
    def parse(cls, spec: str) -> FaultPlan:
        modes: dict[tuple[str, str], str] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            target, _, mode = part.partition(":")
            alias, _, stage = target.rpartition("/")
            if stage not in STAGES or mode not in MODES or "/" in alias:
                raise ValueError(f"RECSYS_FAULTS entry {part!r}: expected [<alias>/]<stage>:<mode> "
                                 f"with stage in {STAGES} and mode in {MODES}")
            if stage in UNTIMED_STAGES and mode == "timeout":
                raise ValueError(f"RECSYS_FAULTS entry {part!r}: {stage} runs without a "
                                 "timeout, so a hang cannot be injected there")
            modes[(alias or EVERY_ALIAS, stage)] = mode
        return cls(modes)

    def mode(self, alias: str, stage: str) -> str | None:
        return self.modes.get((alias, stage), self.modes.get((EVERY_ALIAS, stage)))

    def user_tower(self, alias: str, tower: UserTower) -> UserTower:
        mode = self.mode(alias, "user_tower")
        return tower if mode is None else FaultInjectingTower(tower, mode)

    def scorer(self, alias: str, stage: str, scorer: Scorer) -> Scorer:
        mode = self.mode(alias, stage)
        return scorer if mode is None else FaultInjectingScorer(scorer, stage, mode)

    def source(self, alias: str, source: CandidateSource) -> CandidateSource:
        mode = self.mode(alias, source.name)
        return source if mode is None else FaultInjectingSource(source, mode)

    def search_retriever(self, alias: str, retriever: QueryRetriever) -> QueryRetriever:
        mode = self.mode(alias, f"search_{retriever.name}")
        return retriever if mode is None else FaultInjectingSearchRetriever(retriever, mode)

    def search_ranker(self, alias: str, ranker: SearchRanking) -> SearchRanking:
        mode = self.mode(alias, "search_ranker")
        return ranker if mode is None else FaultInjectingSearchRanker(ranker, mode)
