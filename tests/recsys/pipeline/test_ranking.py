"""The ranking chain on real ONNX rankers: primary → fallback → retrieval order, with a breaker."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from recsys.breaker import CircuitBreaker
from recsys.errors import RankingError
from recsys.models.bundles import RankerBundle
from recsys.pipeline.ranking import RankerChain, RankOutcome
from recsys.pipeline.scorers import LocalScorer
from tests.support.bundle_factory import RANKER_FEATURES, make_ranker_bundle
from tests.support.events import Events

FloatArray = np.ndarray


@pytest.fixture(scope="module")
def rankers(tmp_path_factory: pytest.TempPathFactory) -> tuple[RankerBundle, RankerBundle]:
    """(primary, fallback): two linear ONNX rankers with different weights."""
    root: Path = tmp_path_factory.mktemp("ranking")
    make_ranker_bundle(root / "primary", "embedding-fingerprint", seed=0)
    make_ranker_bundle(root / "fallback", "embedding-fingerprint", seed=7)
    return RankerBundle.load(root / "primary"), RankerBundle.load(root / "fallback")


@pytest.fixture
def features() -> FloatArray:
    return np.random.default_rng(0).standard_normal((12, RANKER_FEATURES)).astype(np.float32)


RETRIEVAL = np.linspace(0.9, 0.1, 12, dtype=np.float32)


class Scripted:
    """A scorer that answers with `behaviour` and counts calls, so tests can tell whether the
    breaker let it run."""

    def __init__(self, behaviour: Callable[[FloatArray], Awaitable[FloatArray]]) -> None:
        self.behaviour, self.calls = behaviour, 0

    async def score(self, features: FloatArray) -> FloatArray:
        self.calls += 1
        return await self.behaviour(features)


async def raising(features: FloatArray) -> FloatArray:
    raise RankingError("ranker service returned 500")


async def hanging(features: FloatArray) -> FloatArray:
    await asyncio.sleep(30)
    raise AssertionError("the timeout should have cancelled this")


async def short(features: FloatArray) -> FloatArray:
    return np.zeros(len(features) - 1, dtype=np.float32)


async def not_finite(features: FloatArray) -> FloatArray:
    return np.full(len(features), np.nan, dtype=np.float32)


async def failing_fallback(features: FloatArray) -> FloatArray:
    raise RankingError("fallback session failed")


async def three_scores(features: FloatArray) -> FloatArray:
    return np.zeros(3, dtype=np.float32)


def chain(primary: Scripted | LocalScorer, fallback: RankerBundle | None,
          events: Events | None = None, failures: int = 5, timeout_s: float = 2.0) -> RankerChain:
    return RankerChain(primary, LocalScorer(fallback) if fallback is not None
                       else Scripted(failing_fallback),
                       CircuitBreaker(failures, 60.0), timeout_s, events)


def rank(ranker: RankerChain, features: FloatArray, timeout_s: float | None = None) -> RankOutcome:
    return asyncio.run(ranker.rank(features, RETRIEVAL[:len(features)], timeout_s))


def test_healthy_primary_ranks(rankers: tuple[RankerBundle, RankerBundle],
                               features: FloatArray) -> None:
    primary, fallback = rankers
    outcome = rank(chain(LocalScorer(primary), fallback), features)
    assert outcome.ranker == "ranker" and outcome.reason is None
    np.testing.assert_allclose(outcome.scores, primary.score(features))
    assert outcome.scores.dtype == np.float32


def test_primary_error_falls_back(rankers: tuple[RankerBundle, RankerBundle],
                                  features: FloatArray) -> None:
    _, fallback = rankers
    events = Events()
    outcome = rank(chain(Scripted(raising), fallback, events), features)
    assert (outcome.ranker, outcome.reason) == ("fallback", "ranker_error")
    np.testing.assert_allclose(outcome.scores, fallback.score(features))
    assert events.seen == [("ranker_error", {"error": "RankingError"})]


def test_primary_timeout_falls_back_in_time(rankers: tuple[RankerBundle, RankerBundle],
                                            features: FloatArray) -> None:
    _, fallback = rankers
    started = time.perf_counter()
    outcome = rank(chain(Scripted(hanging), fallback, timeout_s=0.05), features)
    assert time.perf_counter() - started < 5.0  # the primary would hang for 30 s
    assert (outcome.ranker, outcome.reason) == ("fallback", "ranker_timeout")
    np.testing.assert_allclose(outcome.scores, fallback.score(features))


def test_request_budget_shortens_the_timeout(rankers: tuple[RankerBundle, RankerBundle],
                                             features: FloatArray) -> None:
    _, fallback = rankers
    started = time.perf_counter()
    outcome = rank(chain(Scripted(hanging), fallback, timeout_s=60.0), features, timeout_s=0.05)
    assert time.perf_counter() - started < 5.0
    assert outcome.reason == "ranker_timeout"
    # A budget already spent skips the primary (not its fault: nothing counts against its breaker).
    spent = chain(Scripted(hanging), fallback)
    assert rank(spent, features, timeout_s=-1.0).reason == "budget_exhausted"
    assert spent.breaker.failure_count == 0


@pytest.mark.parametrize("bad", [short, not_finite], ids=["wrong_shape", "nan"])
def test_bad_primary_output_falls_back(rankers: tuple[RankerBundle, RankerBundle],
                                       features: FloatArray, bad) -> None:
    _, fallback = rankers
    outcome = rank(chain(Scripted(bad), fallback), features)
    assert (outcome.ranker, outcome.reason) == ("fallback", "ranker_error")
    np.testing.assert_allclose(outcome.scores, fallback.score(features))


@pytest.mark.parametrize("bad", [raising, short], ids=["error", "wrong_shape"])
def test_breaker_opens_after_repeated_failures(rankers: tuple[RankerBundle, RankerBundle],
                                               features: FloatArray, bad) -> None:
    _, fallback = rankers
    primary = Scripted(bad)
    ranker = chain(primary, fallback, failures=3)

    async def scenario() -> list[RankOutcome]:
        return [await ranker.rank(features, RETRIEVAL) for _ in range(5)]

    outcomes = asyncio.run(scenario())
    assert [o.reason for o in outcomes] == ["ranker_error"] * 3 + ["ranker_circuit_open"] * 2
    assert all(o.ranker == "fallback" for o in outcomes)
    assert primary.calls == 3  # the open breaker did not call the primary again
    assert ranker.breaker.state == "open"


def test_a_success_resets_the_failure_count(rankers: tuple[RankerBundle, RankerBundle],
                                            features: FloatArray) -> None:
    primary_bundle, fallback = rankers
    healthy = LocalScorer(primary_bundle).score
    script = iter([raising, raising, healthy, raising, raising])

    async def flaky(features: FloatArray) -> FloatArray:
        return await next(script)(features)

    ranker = chain(Scripted(flaky), fallback, failures=3)

    async def scenario() -> list[str | None]:
        return [(await ranker.rank(features, RETRIEVAL)).reason for _ in range(5)]

    assert asyncio.run(scenario()) == ["ranker_error", "ranker_error", None, "ranker_error",
                                       "ranker_error"]
    assert ranker.breaker.state == "closed"


def test_fallback_failing_too_keeps_retrieval_order(features: FloatArray) -> None:
    events = Events()
    outcome = rank(chain(Scripted(raising), None, events), features)
    assert outcome.ranker == "retrieval"
    assert outcome.reason == "ranker_error+fallback_error"
    np.testing.assert_array_equal(outcome.scores, RETRIEVAL)
    assert ("fallback_error", {"error": "RankingError"}) in events.seen


def test_fallback_with_wrong_shape_counts_as_failed(features: FloatArray) -> None:
    ranker = RankerChain(Scripted(raising), Scripted(three_scores), CircuitBreaker(5, 60.0), 2.0)
    outcome = rank(ranker, features)
    assert (outcome.ranker, outcome.reason) == ("retrieval", "ranker_error+fallback_error")


def test_no_candidates_calls_nothing(rankers: tuple[RankerBundle, RankerBundle]) -> None:
    _, fallback = rankers
    primary = Scripted(raising)
    outcome = rank(chain(primary, fallback), np.zeros((0, RANKER_FEATURES), dtype=np.float32))
    assert outcome.scores.shape == (0,)
    assert (outcome.ranker, outcome.reason) == ("ranker", None)
    assert primary.calls == 0
