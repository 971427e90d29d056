"""devtools/faults.py: RECSYS_FAULTS parsing and the fault-injecting adapters it wraps stages in."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from devtools.faults import (
    HANG_S,
    SLOW_S,
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

    assert plan.modes == {("*", "ranker"): "error", ("*", "ann"): "timeout",
                          ("*", "user_tower"): "error"}
    assert FaultPlan.parse("").modes == {}
    assert set(STAGES) >= {stage for _, stage in plan.modes}


def test_an_entry_can_name_one_alias() -> None:
    plan = FaultPlan.parse("challenger/ranker:slow,ann:error,champion/ann:timeout")

    assert plan.mode("challenger", "ranker") == "slow" and plan.mode("champion", "ranker") is None
    assert plan.mode("challenger", "ann") == "error"  # every alias
    assert plan.mode("champion", "ann") == "timeout"  # its own entry first


@pytest.mark.parametrize("spec, bad", [
    ("ranker", "'ranker'"), ("ranker:explode", "'ranker:explode'"),
    ("history:error", "'history:error'"), ("ann:error,ranker:late", "'ranker:late'"),
    ("a/b/ranker:error", "'a/b/ranker:error'"),
])
def test_bad_spec_names_the_entry(spec: str, bad: str) -> None:
    with pytest.raises(ValueError, match=rf"RECSYS_FAULTS entry {bad}: expected \[<alias>/\]"):
        FaultPlan.parse(spec)


def test_the_fallback_ranker_cannot_be_made_to_hang() -> None:
    with pytest.raises(ValueError, match="fallback runs without a timeout"):
        FaultPlan.parse("fallback:timeout")
    assert FaultPlan.parse("fallback:slow").mode("champion", "fallback") == "slow"


def test_only_named_stages_are_wrapped() -> None:
    plan = FaultPlan.parse("ranker:error,popular:error")
    scorer, tower, source = EchoScorer(), ZeroTower(), PopularSource(np.arange(1, 9), 5)

    assert plan.scorer("champion", "fallback", scorer) is scorer
    assert plan.user_tower("champion", tower) is tower
    assert isinstance(plan.scorer("champion", "ranker", scorer), FaultInjectingScorer)
    wrapped = plan.source("challenger", source)
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


def test_a_slow_stage_answers_what_the_stage_answers_later() -> None:
    features = np.ones((3, 2), np.float32)

    async def scenario() -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        scores = await FaultInjectingScorer(EchoScorer(), "ranker", "slow").score(features)
        return scores, time.perf_counter() - started

    scores, took = asyncio.run(scenario())
    np.testing.assert_array_equal(scores, asyncio.run(EchoScorer().score(features)))
    assert SLOW_S <= took < HANG_S


class FoundNothing:
    name = "vector"

    def retrieve(self, query: object, allowed: object) -> str:
        return "found"


def test_the_search_vector_retriever_can_fail_or_hang() -> None:
    from devtools.faults import FaultInjectingSearchRetriever

    retriever = FoundNothing()
    plan = FaultPlan.parse("search_vector:error")
    assert "search_vector" in STAGES
    assert plan.search_retriever("champion", retriever) is not retriever
    assert FaultPlan.parse("ranker:error").search_retriever("champion", retriever) is retriever
    with pytest.raises(InjectedFault, match="vector"):
        plan.search_retriever("champion", retriever).retrieve(None, None)
    started = time.perf_counter()
    assert FaultInjectingSearchRetriever(retriever, "slow").retrieve(None, None) == "found"
    assert time.perf_counter() - started >= SLOW_S
