"""Fault injection for tests and game days: RECSYS_FAULTS="ranker:error,ann:timeout" makes the
ranker raise and the ANN source hang past its timeout. Not part of the runtime package or the
Bento: service.py loads it only when RECSYS_FAULTS names stages (serving/fault_injection.py).

Stages: user_tower, ranker, fallback (error only: the fallback ranker has no timeout), ann,
popular, item2item. Faults of the event store are real ones in the tests: a stopped or paused
Redis.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from recsys.errors import StageError
from recsys.pipeline.retrieval import CandidateSource, RetrievalQuery
from recsys.pipeline.scorers import Scorer
from recsys.pipeline.towers import UserTower

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]
STAGES = ("user_tower", "ranker", "fallback", "ann", "popular", "item2item")
MODES = ("error", "timeout")
UNTIMED_STAGES = ("fallback",)  # a hang there would hang the request: only "error"
HANG_S = 5.0  # longer than any stage timeout


class InjectedFault(StageError):
    """Raised by a stage that RECSYS_FAULTS told to fail."""


async def inject(stage: str, mode: str) -> None:
    if mode == "error":
        raise InjectedFault(f"injected failure in {stage}")
    await asyncio.sleep(HANG_S)


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
        time.sleep(HANG_S)
        return self.inner(query)


@dataclass(frozen=True)
class FaultPlan:
    """Which stages fail and how; wraps the adapters of those stages (a StageWrapper)."""

    modes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> FaultPlan:
        modes: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            stage, _, mode = part.partition(":")
            if stage not in STAGES or mode not in MODES:
                raise ValueError(f"RECSYS_FAULTS entry {part!r}: expected <stage>:<mode> with "
                                 f"stage in {STAGES} and mode in {MODES}")
            if stage in UNTIMED_STAGES and mode != "error":
                raise ValueError(f"RECSYS_FAULTS entry {part!r}: {stage} runs without a "
                                 "timeout, so only 'error' can be injected there")
            modes[stage] = mode
        return cls(modes)

    def user_tower(self, tower: UserTower) -> UserTower:
        mode = self.modes.get("user_tower")
        return tower if mode is None else FaultInjectingTower(tower, mode)

    def scorer(self, stage: str, scorer: Scorer) -> Scorer:
        mode = self.modes.get(stage)
        return scorer if mode is None else FaultInjectingScorer(scorer, stage, mode)

    def source(self, source: CandidateSource) -> CandidateSource:
        mode = self.modes.get(source.name)
        return source if mode is None else FaultInjectingSource(source, mode)
