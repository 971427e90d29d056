"""The ranking chain: champion ranker → in-process fallback ranker → retrieval order."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import partial

import numpy as np
import numpy.typing as npt

from recsys.breaker import CircuitBreaker, CircuitOpenError
from recsys.errors import RankingError, RecsysError
from recsys.pipeline.scorers import Scorer
from recsys.telemetry import EventSink, ignore_event

FloatArray = npt.NDArray[np.float32]


MIN_RANKER_S = 0.002  # below this much budget left the primary ranker is skipped, not timed out


class _BudgetSpent(Exception):
    pass


@dataclass(frozen=True)
class RankOutcome:
    scores: FloatArray  # [N], higher first
    ranker: str  # "ranker", "fallback" or "retrieval"
    reason: str | None  # why the primary ranker was not used


def checked(scores: FloatArray, n: int, who: str) -> FloatArray:
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if scores.shape != (n,):
        raise RankingError(f"{who} returned {scores.shape[0]} scores for {n} candidates")
    if not np.isfinite(scores).all():
        raise RankingError(f"{who} returned non-finite scores")
    return scores


class RankerChain:
    """Calls the primary scorer under a timeout and a circuit breaker, degrading step by step:
    the fallback scorer (in this process, no timeout), then the retrieval similarity."""

    def __init__(self, primary: Scorer, fallback: Scorer, breaker: CircuitBreaker,
                 timeout_s: float, on_event: EventSink | None = None) -> None:
        self.primary, self.fallback = primary, fallback
        self.breaker, self.timeout_s = breaker, timeout_s
        self.on_event = on_event or ignore_event

    async def rank(self, features: FloatArray, retrieval_scores: FloatArray,
                   timeout_s: float | None = None) -> RankOutcome:
        n = len(features)
        if n == 0:
            return RankOutcome(np.zeros(0, dtype=np.float32), "ranker", None)
        timeout = min(self.timeout_s, timeout_s) if timeout_s is not None else self.timeout_s
        try:
            if timeout < MIN_RANKER_S:  # earlier stages spent the budget: not the ranker's fault
                raise _BudgetSpent
            scores = await self.breaker.call(partial(self._primary_scores, features, timeout))
            return RankOutcome(scores, "ranker", None)
        except _BudgetSpent:
            reason = "budget_exhausted"
        except CircuitOpenError:
            reason = "ranker_circuit_open"
        except asyncio.TimeoutError:  # not the builtin TimeoutError on Python 3.10
            reason = "ranker_timeout"
        except RecsysError as error:
            reason = "ranker_error"
            self.on_event("ranker_error", error=type(error).__name__)
        try:
            scores = checked(await self.fallback.score(features), n, "fallback ranker")
            return RankOutcome(scores, "fallback", reason)
        except RecsysError as error:
            self.on_event("fallback_error", error=type(error).__name__)
            return RankOutcome(retrieval_scores.astype(np.float32), "retrieval",
                               f"{reason}+fallback_error")

    async def _primary_scores(self, features: FloatArray, timeout_s: float) -> FloatArray:
        """The primary scorer's checked scores: called through the breaker, so a timeout or
        bad output counts as a failure too."""
        scores = await asyncio.wait_for(self.primary.score(features), max(timeout_s, 0.001))
        return checked(scores, len(features), "ranker")
