"""The ranking chain: champion ranker → in-process fallback ranker → retrieval order."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from recsys.breaker import CircuitBreaker, CircuitOpenError
from recsys.errors import RankingError, RecsysError
from recsys.events import EventSink, ignore_event

FloatArray = npt.NDArray[np.float32]
AsyncScorer = Callable[[FloatArray], Awaitable[FloatArray]]
Scorer = Callable[[FloatArray], FloatArray]


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
    """Calls the primary scorer under a timeout and a circuit breaker, degrading step by step."""

    def __init__(self, primary: AsyncScorer, fallback: Scorer, breaker: CircuitBreaker,
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

        async def primary() -> FloatArray:
            scores = await asyncio.wait_for(self.primary(features), max(timeout, 0.001))
            return checked(scores, n, "ranker")  # in the breaker: bad output is a failure too

        try:
            if timeout < MIN_RANKER_S:  # earlier stages spent the budget: not the ranker's fault
                raise _BudgetSpent
            return RankOutcome(await self.breaker.call(primary), "ranker", None)
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
            return RankOutcome(checked(self.fallback(features), n, "fallback ranker"), "fallback",
                               reason)
        except RecsysError as error:
            self.on_event("fallback_error", error=type(error).__name__)
            return RankOutcome(retrieval_scores.astype(np.float32), "retrieval",
                               f"{reason}+fallback_error")
