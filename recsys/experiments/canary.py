"""Canary releases: the challenger serves a growing, stable share of users in stages (1% → 5% →
20% → 50% → 100% by default); at each stage guards compare it with the champion on live traffic
(error and degraded rates, p99 latency, click-through), each with a minimum sample and a one-sided
test so that noise does not decide. A failing guard rolls the canary back; passing every stage
promotes the challenger. A stage that gives the challenger every user has no control of its own:
it is compared with the champion as the stage before measured it. The state is a plain value, saved where every worker and replica reads
it (recsys/experiments/canary_store.py); the decisions are pure functions of it and the counts.
"""
from __future__ import annotations

import math
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from recsys.experiments.routing import Experiment, Variant

Status = Literal["running", "paused", "promoted", "rolled_back", "aborted"]
Decision = Literal["wait", "pass", "fail"]
CONTROL, CANARY = "control", "canary"
DEFAULT_STAGES = (0.01, 0.05, 0.2, 0.5, 1.0)
# Server latency histogram edges (ms) of the counts the guards read; the last bucket is open.
GUARD_COUNT = 4  # error rate, degraded rate, p99, click-through
# Before a stage's minimum duration and sample a guard fails only at this p-value
# (Haybittle-Peto): a clear regression is rolled back at once, and looking every tick spends
# almost none of alpha.
INTERIM_ALPHA = 0.001
LATENCY_EDGES_MS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 150, 200,
                    300, 500, 1000, 2000)


@dataclass(frozen=True)
class Guards:
    """What a stage must show before the canary grows; defaults of issue 13."""

    max_error_increase: float = 0.001  # absolute: +0.1 percentage point
    max_degraded_increase: float = 0.01  # absolute: +1 pp (degradation moves with load)
    max_p99_increase_ms: float = 5.0
    max_ctr_drop: float = 0.01  # relative: -1%
    alpha: float = 0.05  # chance of rolling back a challenger within the margins, whole canary
    min_requests: int = 500  # per variant per stage (and timed answers, before p99 is judged)
    min_impressions: int = 500  # per variant per stage, before click-through is judged
    min_stage_seconds: float = 60.0
    # Latency is timed on answers the variant's models computed (cache hits say nothing of a
    # model, and the canary's users' caches are colder than the control's as it grows) after
    # the first `warmup_seconds` of a stage (the users it moved all miss the cache at once).
    warmup_seconds: float = 10.0


@dataclass(frozen=True)
class Counts:
    """One variant's outcomes in one stage, summed over every worker."""

    requests: int = 0
    errors: int = 0
    degraded: int = 0
    impressions: int = 0
    clicks: int = 0
    # computed answers after the stage's warm-up, per bucket of the edges
    latency: tuple[int, ...] = (0,) * (len(LATENCY_EDGES_MS) + 1)

    @classmethod
    def from_fields(cls, fields: dict[str, int]) -> Counts:
        buckets = tuple(fields.get(f"latency_{i}", 0) for i in range(len(LATENCY_EDGES_MS) + 1))
        return cls(requests=fields.get("requests", 0), errors=fields.get("errors", 0),
                   degraded=fields.get("degraded", 0), impressions=fields.get("impressions", 0),
                   clicks=fields.get("clicks", 0), latency=buckets)

    def rate(self, count: int, of: int) -> float:
        return count / of if of else 0.0

    @property
    def error_rate(self) -> float:
        return self.rate(self.errors, self.requests)

    @property
    def degraded_rate(self) -> float:
        return self.rate(self.degraded, self.requests)

    @property
    def ctr(self) -> float:
        return self.rate(self.clicks, self.impressions)

    @property
    def timed(self) -> int:
        return sum(self.latency)

    def p99_ms(self) -> float:
        """The upper edge of the bucket that holds the 99th percentile (the last edge for the
        open bucket: a lower bound there)."""
        total = self.timed
        running = 0
        for i, count in enumerate(self.latency[:-1]):
            running += count
            if total and running >= 0.99 * total:
                return float(LATENCY_EDGES_MS[i])
        return float(LATENCY_EDGES_MS[-1]) if total else 0.0

    def slower_than(self, ms: float) -> int:
        """Requests in buckets wholly above `ms` (a lower bound of the true count)."""
        lower = (0, *LATENCY_EDGES_MS)
        return sum(c for edge, c in zip(lower, self.latency) if edge >= ms)


def latency_bucket(ms: float) -> int:
    for i, edge in enumerate(LATENCY_EDGES_MS):
        if ms <= edge:
            return i
    return len(LATENCY_EDGES_MS)


def upper_tail(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def worse_proportion(control: tuple[int, int], canary: tuple[int, int], margin: float) -> float:
    """One-sided p-value that the canary's proportion exceeds the control's by more than
    `margin` (two-proportion z-test); (successes, trials) each."""
    (x1, n1), (x2, n2) = control, canary
    if not n1 or not n2:
        return 1.0
    p1, p2 = x1 / n1, x2 / n2
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / n1 + 1 / n2))
    return upper_tail((p2 - p1 - margin) / se)


def above_share(count: int, trials: int, share: float) -> float:
    """One-sided p-value that `count` of `trials` is more than a `share` of them: the exact
    binomial tail P(X >= count), X ~ Binomial(trials, share) (exact, as a small sample of timed
    answers is common and the normal approximation is far too bold there)."""
    if count <= 0:
        return 1.0
    if count > trials:
        return 0.0

    def term(i: int) -> float:
        return math.exp(math.lgamma(trials + 1) - math.lgamma(i + 1) - math.lgamma(trials - i + 1)
                        + i * math.log(share) + (trials - i) * math.log1p(-share))

    if count <= trials * share:  # at or below the mean: one minus the (short) lower tail
        return max(0.0, 1.0 - sum(term(i) for i in range(count)))
    total, i = 0.0, count
    while i <= trials:  # past the mean the terms fall geometrically: stop once they are nothing
        t = term(i)
        total += t
        if t < total * 1e-15:
            break
        i += 1
    return min(1.0, total)


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reasons: tuple[str, ...]
    values: dict[str, dict[str, float]]  # guard -> {"control": ..., "canary": ...}


def judge(control: Counts, canary: Counts, guards: Guards, stage_seconds: float,
          stages: int = len(DEFAULT_STAGES), concurrent: bool = True) -> Verdict:
    """A stage's verdict: "fail" when a guard is worse beyond its margin, significantly; else
    "wait" until the minimum duration and samples are reached; else "pass".

    `concurrent=False`: the control was counted in an earlier stage (a 100% stage has none of
    its own). Its rates still compare, but not its latency, which moves with load and with the
    caches as users change variant: p99 is judged only against a control served alongside.

    Significantly: at a stage's end, p < alpha / (guards × stages) (Bonferroni: a challenger
    within every margin is rolled back with probability at most alpha over the whole canary);
    before it, p < INTERIM_ALPHA."""
    values: dict[str, dict[str, float]] = {
        "error_rate": {CONTROL: control.error_rate, CANARY: canary.error_rate},
        "degraded_rate": {CONTROL: control.degraded_rate, CANARY: canary.degraded_rate},
        "p99_ms": {CONTROL: control.p99_ms(), CANARY: canary.p99_ms()},
        "ctr": {CONTROL: control.ctr, CANARY: canary.ctr},
        "requests": {CONTROL: float(control.requests), CANARY: float(canary.requests)},
        "timed": {CONTROL: float(control.timed), CANARY: float(canary.timed)},
        "impressions": {CONTROL: float(control.impressions), CANARY: float(canary.impressions)}}
    enough = min(control.requests, canary.requests) >= guards.min_requests
    ready = enough and stage_seconds >= guards.min_stage_seconds
    alpha = guards.alpha / (GUARD_COUNT * stages) if ready else INTERIM_ALPHA
    failed = []
    if enough:
        for name, count, margin in (("error rate", "errors", guards.max_error_increase),
                                    ("degraded rate", "degraded", guards.max_degraded_increase)):
            p = worse_proportion((getattr(control, count), control.requests),
                                 (getattr(canary, count), canary.requests), margin)
            if p < alpha:
                failed.append(f"{name} {getattr(canary, count)}/{canary.requests} against "
                              f"{getattr(control, count)}/{control.requests} (p={p:.3g})")
    if concurrent and min(control.timed, canary.timed) >= guards.min_requests:
        threshold = control.p99_ms() + guards.max_p99_increase_ms
        if canary.p99_ms() > threshold:
            # were the canary no slower than allowed, at most 1% of it would be past threshold
            p = above_share(canary.slower_than(threshold), canary.timed, 0.01)
            if p < alpha:
                failed.append(f"p99 {canary.p99_ms():g} ms against {control.p99_ms():g} ms "
                              f"(+{guards.max_p99_increase_ms:g} allowed, p={p:.3g})")
    if min(control.impressions, canary.impressions) >= guards.min_impressions and control.ctr:
        margin = guards.max_ctr_drop * control.ctr
        p = worse_proportion((canary.clicks, canary.impressions),
                             (control.clicks, control.impressions), margin)
        if p < alpha:
            failed.append(f"click-through {canary.ctr:.4f} against {control.ctr:.4f} "
                          f"(-{guards.max_ctr_drop:.0%} allowed, p={p:.3g})")
    if failed:
        return Verdict("fail", tuple(failed), values)
    return Verdict("pass" if ready else "wait", (), values)


@dataclass(frozen=True)
class CanaryState:
    """One canary release, from start to its end."""

    id: str
    status: Status
    stage: int
    stages: tuple[float, ...]
    champion: dict[str, str]  # kind -> model tag under test: what control serves
    challenger: dict[str, str]
    started: float
    stage_started: float
    guards: Guards = field(default_factory=Guards)
    reason: str = ""
    history: tuple[dict[str, Any], ...] = ()

    @classmethod
    def begin(cls, champion: dict[str, str], challenger: dict[str, str], now: float,
              stages: tuple[float, ...] = DEFAULT_STAGES,
              guards: Guards | None = None) -> CanaryState:
        if not stages or any(not 0 < s <= 1 for s in stages) or list(stages) != sorted(stages) \
                or stages[0] >= 1:
            raise ValueError(f"canary stages must be increasing shares in (0, 1], the first "
                             f"below 1 (a control to compare with), got {stages}")
        if challenger == champion:
            raise ValueError("the challenger is the champion: nothing to release")
        state = cls(uuid.uuid4().hex[:12], "running", 0, tuple(stages), dict(champion),
                    dict(challenger), now, now, guards or Guards())
        return state.moved("started", "running", now)

    @property
    def active(self) -> bool:
        return self.status in ("running", "paused")

    @property
    def share(self) -> float:
        """The share of users the challenger serves now."""
        return self.stages[self.stage] if self.active else 0.0

    def experiment(self) -> Experiment:
        """The routing of this stage: a stable hash of the user, salted by the canary's id, so a
        user in the canary stays in it as it grows."""
        share = self.share
        return Experiment(f"canary-{self.id}", (Variant(CONTROL, "champion", 1.0 - share),
                                                Variant(CANARY, "challenger", share)),
                          salt=self.id)

    def moved(self, why: str, status: Status, now: float, stage: int | None = None,
              reason: str = "") -> CanaryState:
        stage = self.stage if stage is None else stage
        entry = {"at": now, "from": {"status": self.status, "stage": self.stage},
                 "to": {"status": status, "stage": stage}, "why": why}
        return replace(self, status=status, stage=stage,
                       stage_started=now if stage != self.stage else self.stage_started,
                       reason=reason or self.reason, history=(*self.history, entry))

    def after(self, verdict: Verdict, now: float) -> CanaryState:
        """The state a stage's verdict leads to (itself while it waits)."""
        if self.status != "running" or verdict.decision == "wait":
            return self
        if verdict.decision == "fail":
            return self.moved("guard failed", "rolled_back", now,
                              reason="; ".join(verdict.reasons))
        if self.stage + 1 < len(self.stages):
            return self.moved(f"stage {self.stage} passed", "running", now, self.stage + 1)
        return self.moved("every stage passed", "promoted", now, reason="every stage passed")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CanaryState:
        return cls(**{**data, "stages": tuple(data["stages"]), "guards": Guards(**data["guards"]),
                      "history": tuple(data["history"])})
