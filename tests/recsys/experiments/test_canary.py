"""The canary's rules: each guard fails on a real regression and not on noise, a stage waits for
its minimum duration and samples, and the state moves through the stages to a promotion or a
rollback; the routing keeps a user in the canary as it grows."""
from __future__ import annotations

import itertools
import random

import pytest

from recsys.experiments.canary import (
    LATENCY_EDGES_MS,
    CanaryState,
    Counts,
    Guards,
    above_share,
    judge,
    latency_bucket,
)
from recsys.experiments.routing import assign

CHAMPION = {"embedding": "e:1", "ranker": "r:1", "fallback_ranker": "f:1"}
CHALLENGER = {"embedding": "e:2", "ranker": "r:2", "fallback_ranker": "f:2"}
GUARDS = Guards(min_requests=1000, min_impressions=1000, min_stage_seconds=30)


def counts(requests: int, *, seed: int, error_rate: float = 0.0, degraded_rate: float = 0.0,
           ctr: float = 0.1, latency_ms: float = 10.0, slow_share: float = 0.0,
           slow_ms: float = 0.0) -> Counts:
    """A variant's outcomes drawn at the given rates, as the workers would count them."""
    rng = random.Random(seed)
    buckets = [0] * (len(LATENCY_EDGES_MS) + 1)
    errors = degraded = clicks = 0
    for _ in range(requests):
        errors += rng.random() < error_rate
        degraded += rng.random() < degraded_rate
        clicks += rng.random() < ctr
        ms = slow_ms if rng.random() < slow_share else latency_ms * rng.uniform(0.5, 1.0)
        buckets[latency_bucket(ms)] += 1
    return Counts(requests, errors, degraded, requests, clicks, tuple(buckets))


def test_latency_buckets_and_p99() -> None:
    assert latency_bucket(0.3) == 0 and latency_bucket(1.0) == 0 and latency_bucket(1.1) == 1
    assert latency_bucket(5000) == len(LATENCY_EDGES_MS)
    fast = counts(10_000, seed=1, latency_ms=9.0)
    assert fast.p99_ms() == 10.0
    tail = counts(10_000, seed=1, latency_ms=9.0, slow_share=0.05, slow_ms=45)
    assert tail.p99_ms() == 50.0
    assert counts(100, seed=1, latency_ms=9.0, slow_share=1.0, slow_ms=9000).p99_ms() == 2000.0
    assert Counts().p99_ms() == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_equal_variants_pass_when_the_stage_is_long_enough(seed: int) -> None:
    control = counts(5000, seed=seed, error_rate=0.002, degraded_rate=0.02)
    canary = counts(5000, seed=seed + 100, error_rate=0.002, degraded_rate=0.02)

    assert judge(control, canary, GUARDS, stage_seconds=31).decision == "pass"
    assert judge(control, canary, GUARDS, stage_seconds=29).decision == "wait"


def test_too_few_requests_wait_even_when_they_look_bad() -> None:
    control = counts(200, seed=1)
    canary = counts(200, seed=2, error_rate=0.05)

    verdict = judge(control, canary, GUARDS, stage_seconds=600)
    assert (verdict.decision, verdict.reasons) == ("wait", ())
    assert verdict.values["error_rate"]["canary"] > 0.02  # reported all the same


@pytest.mark.parametrize("regression, reason", [
    ({"error_rate": 0.01}, "error rate"),
    ({"degraded_rate": 0.2}, "degraded rate"),
    ({"slow_share": 0.05, "slow_ms": 40.0}, "p99"),
    ({"ctr": 0.06}, "click-through"),
])
def test_each_guard_fails_a_real_regression_at_once(regression: dict[str, float],
                                                    reason: str) -> None:
    control = counts(3000, seed=1)
    canary = counts(3000, seed=2, **regression)

    verdict = judge(control, canary, GUARDS, stage_seconds=1)  # no need to wait out the stage
    assert verdict.decision == "fail"
    assert len(verdict.reasons) == 1 and verdict.reasons[0].startswith(reason)


@pytest.mark.parametrize("count, trials, share", [
    (0, 10, 0.01), (1, 10, 0.01), (3, 10, 0.01), (10, 1000, 0.01), (20, 1000, 0.01),
    (40, 1000, 0.01), (150, 10_000, 0.01), (500, 20_000, 0.01), (5, 5, 0.01), (6, 5, 0.01)])
def test_the_share_test_is_the_exact_binomial_tail(count: int, trials: int,
                                                   share: float) -> None:
    from scipy.stats import binom

    expected = binom.sf(count - 1, trials, share) if count <= trials else 0.0
    assert above_share(count, trials, share) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_few_timed_answers_leave_latency_unjudged() -> None:
    """Mostly cache hits: the requests are many, the answers timed (computed after the warm-up)
    too few for a p99; a slow tail among them is not judged until min_requests are timed."""
    control = counts(3000, seed=1)
    slow = counts(3000, seed=2, slow_share=0.05, slow_ms=40.0)
    few = Counts(slow.requests, slow.errors, slow.degraded, slow.impressions, slow.clicks,
                 tuple(c * 200 // 3000 for c in slow.latency))
    assert 0 < few.timed < GUARDS.min_requests

    verdict = judge(control, few, GUARDS, stage_seconds=60)
    assert verdict.decision == "pass" and verdict.values["timed"]["canary"] == few.timed
    assert judge(control, slow, GUARDS, stage_seconds=60).decision == "fail"


def test_a_control_from_an_earlier_stage_compares_rates_but_not_latency() -> None:
    """The 100% stage: the champion as the stage before counted it. Latency then was under
    another load and other caches, so a slower tail is not judged; a worse error rate is."""
    control = counts(3000, seed=1)
    slower = counts(3000, seed=2, slow_share=0.05, slow_ms=40.0)
    failing = counts(3000, seed=2, error_rate=0.01, slow_share=0.05, slow_ms=40.0)

    assert judge(control, slower, GUARDS, stage_seconds=60, concurrent=False).decision == "pass"
    verdict = judge(control, failing, GUARDS, stage_seconds=60, concurrent=False)
    assert verdict.decision == "fail" and [r.split(" ")[0] for r in verdict.reasons] == ["error"]


def test_a_regression_within_the_margins_passes() -> None:
    control = counts(20_000, seed=1, error_rate=0.001)
    canary = counts(20_000, seed=2, error_rate=0.0015, latency_ms=12.0)  # +0.05 pp, +2 ms

    assert judge(control, canary, GUARDS, stage_seconds=60).decision == "pass"


def test_noise_alone_rarely_rolls_back_a_whole_canary() -> None:
    """An equal challenger through five stages at the minimum sample, judged at every tenth of
    the stage and at its end: rolled back in at most about alpha of the canaries."""
    def rolled_back(seed: int) -> bool:
        for stage in range(5):
            for tenth in range(1, 11):
                n = 1000 * tenth // 10
                control = counts(n, seed=seed * 100 + stage, error_rate=0.002, ctr=0.1)
                canary = counts(n, seed=seed * 100 + 50 + stage, error_rate=0.002, ctr=0.1)
                verdict = judge(control, canary, GUARDS, stage_seconds=3 * tenth, stages=5)
                if verdict.decision == "fail":
                    return True
        return False

    assert sum(rolled_back(seed) for seed in range(100)) <= 10


def start(**kwargs: object) -> CanaryState:
    return CanaryState.begin(CHAMPION, CHALLENGER, now=1000.0, **kwargs)  # type: ignore[arg-type]


def test_a_canary_grows_through_its_stages_and_is_promoted() -> None:
    state = start(stages=(0.1, 0.5, 1.0), guards=GUARDS)
    passing = judge(counts(2000, seed=1), counts(2000, seed=2), GUARDS, stage_seconds=60)
    shares = [state.share]
    for step in range(1, 4):
        state = state.after(passing, now=1000.0 + 60 * step)
        shares.append(state.share)

    assert shares == [0.1, 0.5, 1.0, 0.0]
    assert state.status == "promoted" and state.reason == "every stage passed"
    assert [h["why"] for h in state.history] == [
        "started", "stage 0 passed", "stage 1 passed", "every stage passed"]
    assert state.stage_started == 1120.0  # the last stage's start


def test_a_failing_guard_rolls_the_canary_back_with_its_reason() -> None:
    state = start(guards=GUARDS)
    failing = judge(counts(2000, seed=1), counts(2000, seed=2, error_rate=0.02), GUARDS, 5)
    waiting = judge(counts(2000, seed=1), counts(2000, seed=2), GUARDS, 5)

    assert state.after(waiting, 1005.0) is state
    rolled = state.after(failing, 1005.0)
    assert (rolled.status, rolled.stage, rolled.share) == ("rolled_back", 0, 0.0)
    assert rolled.reason.startswith("error rate")
    assert not rolled.active and rolled.after(failing, 1010.0) is rolled  # an end is an end


def test_a_paused_canary_is_not_judged() -> None:
    state = start().moved("paused by an operator", "paused", 1001.0)
    failing = judge(counts(2000, seed=1), counts(2000, seed=2, error_rate=0.02), GUARDS, 5)

    assert state.after(failing, 1002.0) is state
    assert state.active and state.share == 0.01  # a paused canary keeps its users


def test_stages_must_grow_and_the_challenger_must_differ() -> None:
    with pytest.raises(ValueError, match="increasing shares"):
        start(stages=(0.5, 0.2))
    with pytest.raises(ValueError, match="increasing shares"):
        start(stages=(0.0, 1.0))
    with pytest.raises(ValueError, match="the first below 1"):
        start(stages=(1.0,))
    with pytest.raises(ValueError, match="the challenger is the champion"):
        CanaryState.begin(CHAMPION, dict(CHAMPION), now=0.0)


def test_a_user_in_the_canary_stays_in_it_as_it_grows() -> None:
    state = start(stages=(0.05, 0.2, 0.5, 1.0))
    users = [str(u) for u in range(4000)]
    in_canary = []
    for stage in range(4):
        experiment = state.moved("test", "running", 0.0, stage).experiment()
        in_canary.append({u for u in users if assign(experiment, u).name == "canary"})

    assert all(a <= b for a, b in itertools.pairwise(in_canary))
    # each canary draws its users afresh (its id salts the hash): within 4.5 sd of 4,000 users
    assert [len(s) / len(users) for s in in_canary] == pytest.approx([0.05, 0.2, 0.5, 1.0],
                                                                     abs=0.035)
    other = start(stages=(0.05, 0.2, 0.5, 1.0)).experiment()
    again = {u for u in users if assign(other, u).name == "canary"}
    assert again != in_canary[0]  # a new canary draws its own users


def test_the_state_survives_its_json() -> None:
    state = start(stages=(0.1, 1.0), guards=GUARDS).moved("stage 0 passed", "running", 1060.0, 1)

    assert CanaryState.from_json(state.to_json()) == state
