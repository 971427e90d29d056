"""One worker's part in a canary release (recsys/experiments/canary.py has the rules).

Every tick (RECSYS_CANARY_TICK_S) each worker adds what it served since the last one to the
stage's counts, reads the canary's state and routes users as its stage says (loading the
challenger through the registry follower first). The worker holding the judging lease also
judges the stage and moves the state: the next stage, a rollback, or the promotion, which it makes
in the registry (the followers of every worker and replica then serve the new champion).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import defaultdict
from dataclasses import replace
from typing import Any

from recsys.app.live_models import LiveModels
from recsys.errors import RequestError, StoreError
from recsys.experiments.canary import (
    CANARY,
    CONTROL,
    CanaryState,
    Counts,
    Guards,
    judge,
    latency_bucket,
)
from recsys.experiments.canary_store import CanaryStore
from recsys.experiments.routing import Router
from recsys.models.registry_client import CHALLENGER, CHAMPION, PREVIOUS_CHAMPION
from recsys.pipeline.recommend import RecommendPipeline
from recsys.telemetry import Telemetry

LOG = logging.getLogger("bentoml.recsys.canary")
LEASE_TICKS = 5  # the judging lease outlives this many ticks of its holder


class CanaryError(RequestError):
    """A canary command that cannot be carried out now (HTTP 400 on the admin endpoints)."""


class CanaryControl:
    def __init__(self, store: CanaryStore, live: LiveModels, telemetry: Telemetry,
                 tick_s: float) -> None:
        self.store, self.live, self.telemetry, self.tick_s = store, live, telemetry, tick_s
        self.holder = f"{os.getpid()}-{id(self)}"
        self.state: CanaryState | None = None
        self.verdict: dict[str, Any] | None = None  # the last judgement of the current stage
        self.routing = False  # whether this worker routes by the canary (its challenger loaded)
        self.tally: dict[tuple[str, int, str], dict[str, int]] = defaultdict(
            lambda: defaultdict(int))
        self.pending: set[asyncio.Future[Any]] = set()
        self.task: asyncio.Task[None] | None = None

    # --- on the request path: local counting only ------------------------------------------
    def served(self, variant: str, user_id: str, result: dict[str, Any], latency_ms: float,
               computed: bool) -> None:
        state = self.state
        if state is None or state.status != "running" or not self.routing:
            return
        counts = self.tally[(state.id, state.stage, variant)]
        counts["requests"] += 1
        counts["impressions"] += 1
        counts["degraded"] += bool(result["degraded"])
        if computed and time.time() - state.stage_started >= state.guards.warmup_seconds:
            counts[f"latency_{latency_bucket(latency_ms)}"] += 1
        record = {"variant": variant, "canary": state.id, "stage": state.stage,
                  "items": [item["item_id"] for item in result["items"]]}
        self.background(self.store.remember_served(user_id, record))

    def failed(self, variant: str) -> None:
        state = self.state
        if state is not None and state.status == "running" and self.routing:
            counts = self.tally[(state.id, state.stage, variant)]
            counts["requests"] += 1
            counts["errors"] += 1

    async def clicked(self, user_id: str, item_id: str, event_type: str) -> None:
        """A click on an item the user was last recommended in this canary counts for the
        variant that recommended it."""
        state = self.state
        if event_type != "click" or state is None or state.status != "running":
            return
        try:
            served = await self.store.served_to(user_id)
        except StoreError:
            return  # an unattributed click: the guard then sees slightly less engagement
        if served is not None and served["canary"] == state.id and item_id in served["items"]:
            self.tally[(state.id, served["stage"], served["variant"])]["clicks"] += 1

    def background(self, write: Any) -> None:
        future = asyncio.ensure_future(write)
        self.pending.add(future)
        future.add_done_callback(self.settled)

    def settled(self, future: asyncio.Future[Any]) -> None:
        self.pending.discard(future)
        if not future.cancelled() and future.exception() is not None:
            self.telemetry.event("canary_store_error")

    # --- commands (every worker and replica applies them at its next tick) -----------------
    async def begin(self, stages: tuple[float, ...] | None, guards: Guards) -> CanaryState:
        current = await self.store.load()
        if current is not None and current.active:
            raise CanaryError("action", f"canary {current.id} is {current.status} already: "
                                        "pause, resume, abort or promote it")
        champion, challenger = await asyncio.gather(
            asyncio.to_thread(self.live.client.aliased_set, CHAMPION),
            asyncio.to_thread(self.live.client.aliased_set, CHALLENGER))
        if challenger is None:
            raise CanaryError("action", "no challenger is registered: register one first")
        if champion is None:
            raise CanaryError("action", "no champion is registered")
        try:
            state = CanaryState.begin(champion.tags, challenger.tags, time.time(),
                                      **({"stages": stages} if stages else {}), guards=guards)
        except ValueError as error:
            raise CanaryError("stages", str(error)) from error
        await self.store.save(state)
        LOG.info("canary %s started: %s against %s in stages %s", state.id, challenger.tags,
                 champion.tags, state.stages)
        return state

    async def command(self, action: str) -> CanaryState:
        """pause, resume, abort or promote the canary that is running or paused."""
        state = await self.store.load()
        if state is None or not state.active:
            raise CanaryError("action", f"no canary is running to {action}")
        now = time.time()
        if action == "pause":
            moved = state.moved("paused by an operator", "paused", now)
        elif action == "resume":
            moved = state.moved("resumed by an operator", "running", now)
        elif action == "abort":
            moved = state.moved("aborted by an operator", "aborted", now, reason="aborted")
        elif action == "promote":
            moved = state.moved("promoted by an operator", "promoted", now,
                                reason="promoted by an operator")
            await self.promote(moved)
        else:
            raise CanaryError("action", f"unknown canary action {action!r}")
        if not await self.store.save(moved, replacing=state):
            raise CanaryError("action", f"canary {state.id} moved while this {action} was "
                                        "made: look at its status and try again")
        return moved

    async def rollback(self) -> dict[str, str]:
        """Put the previous champion back (the followers load it within a poll); a canary that
        is running is aborted first. Returns the new champion's tags."""
        state = await self.store.load()
        if state is not None and state.active:
            await self.store.save(state.moved("aborted by a rollback", "aborted", time.time(),
                                              reason="rolled back by an operator"))
        previous = await asyncio.to_thread(self.live.client.aliased_set, PREVIOUS_CHAMPION)
        if previous is None:
            raise CanaryError("action", "nothing to roll back to: no previous_champion alias")
        await asyncio.to_thread(self.live.client.promote, previous)
        LOG.info("rolled back to %s", previous.tags)
        return previous.tags

    async def status(self, verdicts: int) -> dict[str, Any]:
        state = await self.store.load()
        if state is None:
            return {"canary": None, "verdicts": []}
        return {"canary": {**state.to_json(), "share": state.share},
                "verdicts": await self.store.verdicts(state.id, last=verdicts) if verdicts else []}

    # --- the background tick ---------------------------------------------------------------
    def start(self, pipeline: RecommendPipeline) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.follow(pipeline),
                                                               name="canary-control")

    async def aclose(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await asyncio.gather(*self.pending, return_exceptions=True)
        try:  # what this worker counted since its last tick
            await self.flush()
        except StoreError as error:
            LOG.warning("canary counts of the last tick lost at shutdown: %s", error)
        await self.store.aclose()

    async def follow(self, pipeline: RecommendPipeline) -> None:
        while True:
            try:
                await self.tick(pipeline)
            except StoreError as error:  # Redis is down: route as last read, count again later
                LOG.warning("canary tick skipped: %s", error)
            except Exception:  # e.g. the registry unreachable: tried again next tick
                LOG.exception("canary tick failed")
            await asyncio.sleep(self.tick_s)

    async def tick(self, pipeline: RecommendPipeline) -> None:
        await self.flush()
        state = await self.store.load()
        if state != self.state or (state is not None and state.active and not self.routing):
            await self.apply(pipeline, state)  # (the challenger not loaded yet: try again)
        if state is not None and state.status == "running" and \
                await self.store.lease(self.holder, self.tick_s * LEASE_TICKS):
            try:
                await self.judge(pipeline, state)
            except Exception:  # e.g. the registry unreachable: another worker judges next
                await self.release_lease()
                raise
        elif state is not None and state.active:
            last = await self.store.verdicts(state.id, last=1)
            self.verdict = last[0] if last else None

    async def release_lease(self) -> None:
        """Renewed at every tick, a failing judge's lease would stall the canary: given up."""
        try:
            await self.store.release(self.holder)
        except StoreError:
            pass  # Redis is down: the lease expires by itself

    async def flush(self) -> None:
        tally, self.tally = self.tally, defaultdict(lambda: defaultdict(int))
        for (canary_id, stage, variant), fields in tally.items():
            await self.store.add_counts(canary_id, stage, variant, dict(fields))

    async def judge(self, pipeline: RecommendPipeline, state: CanaryState) -> None:
        counts = await self.store.counts(state.id, state.stage)
        concurrent = not (state.share >= 1.0 and state.stage > 0)
        if not concurrent:  # no control left: the champion as the stage before counted it
            counts[CONTROL] = (await self.store.counts(state.id, state.stage - 1))[CONTROL]
        verdict = judge(counts[CONTROL], counts[CANARY], state.guards,
                        time.time() - state.stage_started, len(state.stages), concurrent)
        self.verdict = {"at": time.time(), "stage": state.stage, "share": state.share,
                        "decision": verdict.decision, "reasons": list(verdict.reasons),
                        "values": verdict.values, "counts": counts_json(counts)}
        await self.store.add_verdict(state.id, self.verdict)
        for guard, by_variant in verdict.values.items():
            for variant, value in by_variant.items():
                self.telemetry.event("canary_guard", guard=guard, variant=variant,
                                     value=repr(float(value)))
        moved = state.after(verdict, time.time())
        if moved == state:
            return
        if moved.status == "promoted":
            try:
                await self.promote(moved)
            except CanaryError as error:  # the challenger alias moved: nothing to promote
                moved = state.moved("challenger alias moved", "aborted", time.time(),
                                    reason=str(error))
        if await self.store.save(moved, replacing=state):  # else an operator came first
            await self.apply(pipeline, moved)

    async def promote(self, state: CanaryState) -> None:
        """Make the challenger under test the champion in the registry (done already: nothing)."""
        champion = await asyncio.to_thread(self.live.client.aliased_set, CHAMPION)
        if champion is not None and champion.tags == state.challenger:
            return  # a judge that promoted, then failed to save, judged again
        challenger = await asyncio.to_thread(self.live.client.aliased_set, CHALLENGER)
        if challenger is None or challenger.tags != state.challenger:
            raise CanaryError("canary", "the challenger alias moved during the canary: "
                                        "not promoted")
        await asyncio.to_thread(self.live.client.promote, challenger)

    async def apply(self, pipeline: RecommendPipeline, state: CanaryState | None) -> None:
        """Route as `state` says: the challenger loaded and served its share while the canary is
        active; the configured routing otherwise (also while the challenger cannot be loaded:
        the follower reports why, and the next tick tries again once the aliases move)."""
        previous, builder = self.state, self.live.builder
        active = state is not None and state.active
        builder.aliases = {*builder.default_aliases, CHALLENGER} if active else \
            set(builder.default_aliases)
        await self.live.check(pipeline)  # loads or drops the challenger when the aliases changed
        self.routing = state is not None and active and CHALLENGER in pipeline.resolver.slots
        builder.router = Router(state.experiment()) if state is not None and self.routing \
            else builder.default_router
        pipeline.resolver.serve(replace(pipeline.resolver.models, router=builder.router))
        self.state = state
        if previous is None or state is None or (previous.status, previous.stage) != \
                (state.status, state.stage):
            self.report(state)

    def report(self, state: CanaryState | None) -> None:
        if state is None:
            return
        LOG.info("canary %s: %s at stage %d (%.0f%% of users)%s", state.id, state.status,
                 state.stage, state.share * 100, f": {state.reason}" if state.reason else "")
        self.telemetry.event("canary_state", status=state.status, stage=str(state.stage),
                             share=repr(state.share))

    def info(self) -> dict[str, Any] | None:
        state = self.state
        if state is None:
            return None
        return {**state.to_json(), "share": state.share, "last_verdict": self.verdict}


def counts_json(counts: dict[str, Counts]) -> dict[str, Any]:
    return {variant: {"requests": c.requests, "errors": c.errors, "degraded": c.degraded,
                      "impressions": c.impressions, "clicks": c.clicks, "p99_ms": c.p99_ms()}
            for variant, c in counts.items()}
