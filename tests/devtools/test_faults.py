"""devtools/faults.py: RECSYS_FAULTS parsing and the fault-injecting adapters it wraps stages in."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from devtools.faults import (
    STAGES,
    FaultInjectingScorer,
    FaultInjectingSource,
    FaultInjectingTower,
    FaultPlan,
    InjectedFault,
)
from recsys.errors import StageError
from recsys.pipeline.retrieval import PopularSource, RetrievalQuery


class EchoScorer:
    async def score(self, features: np.ndarray) -> np.ndarray:
        return features[:, 0]


class ZeroTower:
    async def encode(self, history: np.ndarray, attributes: np.ndarray) -> np.ndarray:
        return np.zeros((len(history), 4), np.float32)


def test_spec_parses_stages_and_modes() -> None:
    plan = FaultPlan.parse(" ranker:error , ann:timeout,,user_tower:error ")

    assert plan.modes == {"ranker": "error", "ann": "timeout", "user_tower": "error"}
    assert FaultPlan.parse("").modes == {}
    assert set(STAGES) >= set(plan.modes)


@pytest.mark.parametrize("spec, bad", [
    ("ranker", "'ranker'"), ("ranker:explode", "'ranker:explode'"),
    ("history:error", "'history:error'"), ("ann:error,ranker:slow", "'ranker:slow'"),
])
def test_bad_spec_names_the_entry(spec: str, bad: str) -> None:
    with pytest.raises(ValueError, match=f"RECSYS_FAULTS entry {bad}: expected <stage>:<mode>"):
        FaultPlan.parse(spec)


def test_the_fallback_ranker_cannot_be_made_to_hang() -> None:
    with pytest.raises(ValueError, match="fallback runs without a timeout"):
        FaultPlan.parse("fallback:timeout")


def test_only_named_stages_are_wrapped() -> None:
    plan = FaultPlan.parse("ranker:error,popular:error")
    scorer, tower, source = EchoScorer(), ZeroTower(), PopularSource(np.arange(1, 9), 5)

    assert plan.scorer("fallback", scorer) is scorer and plan.user_tower(tower) is tower
    assert isinstance(plan.scorer("ranker", scorer), FaultInjectingScorer)
    wrapped = plan.source(source)
    assert isinstance(wrapped, FaultInjectingSource)
    assert (wrapped.name, wrapped.inline) == ("popular", False)  # a hang runs in a thread


def test_injected_errors_are_stage_errors() -> None:
    features = np.ones((3, 2), np.float32)
    query = RetrievalQuery(np.zeros(4, np.float32), np.zeros(0, np.int64))

    with pytest.raises(InjectedFault, match="injected failure in ranker") as caught:
        asyncio.run(FaultInjectingScorer(EchoScorer(), "ranker", "error").score(features))
    assert isinstance(caught.value, StageError)
    with pytest.raises(InjectedFault, match="user_tower"):
        asyncio.run(FaultInjectingTower(ZeroTower(), "error").encode(
            np.zeros((1, 3), np.int64), np.zeros((1, 1), np.int64)))
    with pytest.raises(InjectedFault, match="popular"):
        FaultInjectingSource(PopularSource(np.arange(1, 9), 5), "error")(query)


def test_an_injected_hang_outlasts_a_stage_timeout() -> None:
    async def scenario() -> float:
        started = time.perf_counter()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(FaultInjectingTower(ZeroTower(), "timeout").encode(
                np.zeros((1, 3), np.int64), np.zeros((1, 1), np.int64)), 0.05)
        return time.perf_counter() - started

    assert asyncio.run(scenario()) < 1.0
