"""One worker's part in a canary, in process, against a real MLflow tracking server and Redis:
it loads the challenger and routes by the stage, counts what each variant served and the clicks
on it, judges, moves the stages and promotes in the registry; operators' commands and a
rollback; nothing counted from a worker whose challenger is not loaded."""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from devtools.local_redis import free_port
from recsys.app.assembly import build_live_runtime
from recsys.app.canary_control import CanaryControl, CanaryError
from recsys.app.runtime import Runtime
from recsys.experiments.canary import CANARY, CONTROL, Guards
from recsys.models.registry_client import RegistryClient, RegistryUnavailableError
from recsys.pipeline.request import RecommendRequest
from recsys.settings import ServingSettings
from registry import CHALLENGER, CHAMPION, PREVIOUS_CHAMPION
from tests.support.fixtures_models import TrainedModels
from tests.support.registry_server import RegistryServer, registry_copy
from tests.support.runtime import Recorder

USERS = [f"u{n}" for n in range(150)]
# 30% of USERS is 23-65 users over 4000 salts (measured): a stage passes on the first judgement
# with counts, whatever the salt (at 40, 17% of salts waited a tick more)
QUICK = Guards(min_requests=20, min_impressions=10**6, min_stage_seconds=0.0,
               max_p99_increase_ms=1000.0)


@pytest.fixture
def server(trained_models: TrainedModels, tmp_path: Path) -> Iterator[RegistryServer]:
    with registry_copy(trained_models, tmp_path / "registry") as server:
        yield server


@pytest.fixture
def settings(server: RegistryServer, redis_url: str, tmp_path: Path) -> ServingSettings:
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()
    return ServingSettings(
        model_source="registry", registry_uri=server.url, redis_url=redis_url,
        model_cache_dir=tmp_path / "model-cache", budget_ms=5000.0, tower_timeout_ms=1000.0,
        retrieval_timeout_ms=2000.0, ranking_timeout_ms=2000.0, redis_timeout_ms=500.0,
        warm_users=5)


def control_of(runtime: Runtime) -> CanaryControl:
    assert runtime.canary is not None
    return runtime.canary


async def serve_everyone(runtime: Runtime) -> dict[str, str]:
    """Each user's variant, as /recommend answers it."""
    answers = [await runtime.pipeline.respond(RecommendRequest(user, 5)) for user in USERS]
    return {user: a.fields["variant"] for user, a in zip(USERS, answers)}


def test_a_canary_routes_counts_judges_and_promotes(
        settings: ServingSettings, server: RegistryServer, trained_models: TrainedModels) -> None:
    async def scenario() -> dict[str, Any]:
        runtime = build_live_runtime(settings, Recorder())
        canary = control_of(runtime)
        seen: dict[str, Any] = {}
        try:
            await canary.begin((0.3, 1.0), QUICK)
            await canary.tick(runtime.pipeline)  # applies: loads the challenger, routes
            seen["routing"] = canary.routing
            seen["stage 0"] = await serve_everyone(runtime)
            await canary.tick(runtime.pipeline)  # counts, judges: stage 0 passes
            seen["after stage 0"] = (await canary.status(0))["canary"]
            await canary.tick(runtime.pipeline)  # applies stage 1
            seen["stage 1"] = await serve_everyone(runtime)
            await canary.tick(runtime.pipeline)  # stage 1 (compared with stage 0's control)
            seen["end"] = await canary.status(5)
            await canary.tick(runtime.pipeline)  # every worker: the end applied
            seen["served after"] = set((await serve_everyone(runtime)).values())
            seen["verdict"] = canary.verdict
            seen["counts"] = await canary.store.counts(seen["end"]["canary"]["id"], 0)
        finally:
            await runtime.aclose()
        return seen

    seen = asyncio.run(scenario())
    in_canary = [u for u, v in seen["stage 0"].items() if v == CANARY]
    assert seen["routing"] is True and 0.15 < len(in_canary) / len(USERS) < 0.45
    assert all(seen["stage 1"][u] == CANARY for u in in_canary)  # a canary user stays in it
    assert set(seen["stage 1"].values()) == {CANARY}
    assert seen["after stage 0"]["stage"] == 1
    counts = seen["counts"]
    assert counts[CANARY].requests == len(in_canary)
    assert counts[CONTROL].requests == len(USERS) - len(in_canary)
    end = seen["end"]["canary"]
    assert end["status"] == "promoted" and end["reason"] == "every stage passed"
    decisions = [(v["stage"], v["decision"]) for v in seen["end"]["verdicts"]]
    assert decisions == [(0, "wait"), (0, "pass"), (1, "wait"), (1, "pass")]
    stage1 = seen["end"]["verdicts"][-1]
    assert stage1["counts"][CONTROL]["requests"] == counts[CONTROL].requests  # stage 0's control
    registry = server.registry()
    assert not registry.alias_exists(CHALLENGER) and registry.alias_exists(PREVIOUS_CHAMPION)
    assert seen["served after"] == {"control"}


def test_a_judge_that_cannot_reach_the_registry_gives_the_lease_up(
        settings: ServingSettings, tmp_path: Path) -> None:
    """The last stage passes, but this worker's registry is unreachable, so it cannot promote:
    it gives the judging lease up at once (another worker takes it at its next tick, not after
    the lease's 5 ticks, and never while this one would have gone on renewing it)."""
    async def scenario() -> dict[str, Any]:
        runtime = build_live_runtime(settings, Recorder())
        canary = control_of(runtime)
        seen: dict[str, Any] = {}
        try:
            await canary.begin((0.3, 1.0), QUICK)
            await canary.tick(runtime.pipeline)  # stage 0 applied
            await serve_everyone(runtime)
            await canary.tick(runtime.pipeline)  # stage 0 counted and passed, stage 1 applied
            await serve_everyone(runtime)
            reachable = canary.live.client
            canary.live.client = RegistryClient(f"http://127.0.0.1:{free_port()}",
                                                tmp_path / "unreachable-cache", timeout_s=2.0)
            with pytest.raises(RegistryUnavailableError):
                await canary.tick(runtime.pipeline)  # passes, cannot promote
            seen["state"] = (await canary.status(0))["canary"]
            seen["another worker"] = await canary.store.lease("another-worker", 5.0)
            await canary.store.release("another-worker")
            canary.live.client = reachable
            await canary.tick(runtime.pipeline)  # this worker again, the registry back
            seen["end"] = (await canary.status(0))["canary"]
        finally:
            await runtime.aclose()
        return seen

    seen = asyncio.run(scenario())
    assert (seen["state"]["status"], seen["state"]["stage"]) == ("running", 1)
    assert seen["another worker"] is True
    assert seen["end"]["status"] == "promoted"


def test_clicks_count_for_the_variant_that_recommended_the_item(
        settings: ServingSettings) -> None:
    async def scenario() -> tuple[Any, ...]:
        runtime = build_live_runtime(settings, Recorder())
        canary = control_of(runtime)
        try:
            await canary.begin((0.5, 1.0), QUICK)
            await canary.tick(runtime.pipeline)
            catalogue = list(runtime.pipeline.resolver.champion.item_rows)
            unseen: dict[str, str] = {}  # an item not recommended: its click counts nowhere
            served = {}
            for user in USERS[:20]:
                answer = await runtime.pipeline.respond(RecommendRequest(user, 5))
                items = [item["item_id"] for item in answer.result["items"]]
                served[user] = (answer.fields["variant"], items[0])
                unseen[user] = next(i for i in catalogue if i not in items)
            await asyncio.gather(*canary.pending)  # the lists served, remembered in Redis
            for user, (_, item) in served.items():
                await runtime.event_recorder.record_event(user, item, "click", 1.0)
                await runtime.event_recorder.record_event(user, unseen[user], "click", 2.0)
                await runtime.event_recorder.record_event(user, item, "view", 3.0)
            await canary.flush()
            state = canary.state
            assert state is not None
            return served, await canary.store.counts(state.id, 0)
        finally:
            await runtime.aclose()

    served, counts = asyncio.run(scenario())
    by_variant = {v: sum(1 for variant, _ in served.values() if variant == v)
                  for v in (CONTROL, CANARY)}
    assert counts[CONTROL].clicks == by_variant[CONTROL] and counts[CANARY].clicks == by_variant[
        CANARY]
    assert counts[CONTROL].impressions + counts[CANARY].impressions == 20


def test_latency_is_timed_on_computed_answers_after_the_stage_warm_up(
        settings: ServingSettings) -> None:
    """A cache hit is counted but not timed, and neither is an answer in a stage's first
    `warmup_seconds`: the p99 guard compares the variants' models, not their caches."""
    async def scenario() -> tuple[Any, ...]:
        runtime = build_live_runtime(settings, Recorder())
        canary = control_of(runtime)

        async def counted(users: list[str], rounds: int) -> dict[str, Any]:
            for _ in range(rounds):
                for user in users:
                    await runtime.pipeline.respond(RecommendRequest(user, 5))
            await canary.flush()
            assert canary.state is not None
            return await canary.store.counts(canary.state.id, 0)

        try:
            await canary.begin((0.5, 1.0), replace(QUICK, warmup_seconds=3600.0))
            await canary.tick(runtime.pipeline)
            in_warm_up = await counted(USERS[:50], rounds=1)
            await canary.command("abort")
            await canary.begin((0.5, 1.0), replace(QUICK, warmup_seconds=0.0))
            await canary.tick(runtime.pipeline)
            warmed = await counted(USERS[50:], rounds=2)  # the second round: cache hits
            return in_warm_up, warmed
        finally:
            await runtime.aclose()

    in_warm_up, warmed = asyncio.run(scenario())
    assert sum(c.requests for c in in_warm_up.values()) == 50
    assert sum(c.timed for c in in_warm_up.values()) == 0
    assert sum(c.requests for c in warmed.values()) == 200
    assert sum(c.timed for c in warmed.values()) == 100  # the first round's, computed
    assert all(c.timed for c in warmed.values())  # both variants timed


def test_operators_pause_resume_abort_and_roll_back(
        settings: ServingSettings, server: RegistryServer) -> None:
    async def scenario() -> list[Any]:
        runtime = build_live_runtime(settings, Recorder())
        canary = control_of(runtime)
        steps: list[Any] = []
        try:
            with pytest.raises(CanaryError, match="no canary is running to pause"):
                await canary.command("pause")
            await canary.begin(None, QUICK)
            with pytest.raises(CanaryError, match="running already"):
                await canary.begin(None, QUICK)
            for action in ("pause", "resume", "abort"):
                steps.append((await canary.command(action)).status)
            await canary.tick(runtime.pipeline)
            steps.append(CHALLENGER in runtime.pipeline.resolver.slots)  # dropped at the end
            await canary.begin(None, QUICK)
            steps.append(await canary.rollback())  # aborts the canary, then rolls back
            steps.append((await canary.status(0))["canary"]["status"])
        finally:
            await runtime.aclose()
        return steps

    before = server.registry().resolve(CHAMPION)
    with pytest.raises(Exception, match="nothing to roll back"):
        server.registry().rollback()  # the fixture's store has no previous champion
    server.registry().promote(CHALLENGER)  # now there is one: the fixture's champion
    server.registry().set_aliases(before, CHALLENGER)  # and a challenger to canary

    steps = asyncio.run(scenario())
    assert steps[:3] == ["paused", "running", "aborted"]
    assert steps[3] is False
    assert isinstance(steps[4], dict) and steps[5] == "aborted"
    assert server.registry().resolve(CHAMPION) == before


def test_a_worker_without_the_challenger_counts_nothing(
        settings: ServingSettings, server: RegistryServer) -> None:
    """The challenger's files are refused (altered): this worker keeps routing everyone to the
    champion and adds nothing to the canary's counts, which other workers judge."""
    async def scenario() -> tuple[bool, int, int]:
        runtime = build_live_runtime(settings, Recorder())
        canary = control_of(runtime)
        try:
            await canary.begin((0.5, 1.0), QUICK)
            assert runtime.live is not None
            aliased = runtime.live.client.aliased_set(CHALLENGER)
            assert aliased is not None
            ranker = runtime.live.client.fetch(aliased.versions["ranker"], "ranker")
            with (ranker / "scaler.json").open("a") as altered:
                altered.write(" ")
            await canary.tick(runtime.pipeline)
            variants = await serve_everyone(runtime)
            await canary.flush()
            state = canary.state
            assert state is not None
            counts = await canary.store.counts(state.id, 0)
            return canary.routing, len(set(variants.values())), counts[CONTROL].requests
        finally:
            await runtime.aclose()

    assert asyncio.run(scenario()) == (False, 1, 0)
