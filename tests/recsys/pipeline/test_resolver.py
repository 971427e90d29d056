"""The request resolver on real trained models and a real Redis: routing, ids on the serving
slot, user state at each slot's own history length, the user vector within the tower's own
timeout."""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from recsys.app.assembly import build_runtime
from recsys.app.models_file import ModelRefs
from recsys.app.runtime import Runtime
from recsys.context import Context
from recsys.errors import UnknownIdError
from recsys.features import encode_history
from recsys.pipeline.request import RecommendRequest
from recsys.pipeline.resolver import ServedModels
from recsys.settings import ServingSettings
from recsys.telemetry import Telemetry
from serving.fault_injection import fault_plan
from tests.support.fixtures_models import CHALLENGER_HISTORY_LEN, TrainedModels

T = TypeVar("T")
ALL_TO_CHALLENGER = {"active": "all", "experiments": [{"name": "all", "variants": [
    {"name": "treatment", "alias": "challenger", "weight": 1}]}]}


def settings(**overrides: Any) -> ServingSettings:
    values: dict[str, Any] = {"budget_ms": 5000.0, "tower_timeout_ms": 1000.0,
                              "retrieval_timeout_ms": 2000.0, "ranking_timeout_ms": 2000.0,
                              "redis_timeout_ms": 500.0}
    return ServingSettings(**(values | overrides))


def run(config: ServingSettings, refs: list[ModelRefs],
        scenario: Callable[[Runtime], Awaitable[T]]) -> T:
    async def main() -> T:
        runtime = build_runtime(config, refs, Telemetry(), wrap=fault_plan(config.faults))
        try:
            return await scenario(runtime)
        finally:
            await runtime.aclose()
    return asyncio.run(main())


@pytest.fixture(scope="module")
def refs(trained_models: TrainedModels) -> list[ModelRefs]:
    return [trained_models.refs("champion"), trained_models.refs("challenger")]


@pytest.fixture
def to_challenger(tmp_path: Path) -> Path:
    path = tmp_path / "experiments.json"
    path.write_text(json.dumps(ALL_TO_CHALLENGER))
    return path


def test_each_slot_reads_its_own_history_length(redis_url: str, refs: list[ModelRefs],
                                                to_challenger: Path) -> None:
    """A challenger trained with a shorter history gets its own length of the user's events,
    and its vector is its tower's on that history."""
    user = f"history-{time.time_ns()}"

    async def scenario(runtime: Runtime) -> dict[str, Any]:
        resolver = runtime.pipeline.resolver
        champion, challenger = resolver.slots["champion"], resolver.slots["challenger"]
        events = [str(i) for i in challenger.catalog.item_ids[1:31]]  # in both catalogues
        for n, item in enumerate(events):
            await runtime.event_recorder.record_event(user, item, "view", float(n))
        reasons: list[str] = []
        states = {slot.alias: await resolver.user_state(slot, user, np.zeros(0, np.int64),
                                                        reasons)
                  for slot in (champion, challenger)}
        vector = await resolver.user_vector(challenger, states["challenger"], reasons)
        direct = await challenger.user_tower.encode(
            encode_history([challenger.item_rows[i] for i in events],
                           CHALLENGER_HISTORY_LEN)[None, :],
            states["challenger"].attributes[None, :])
        answer = await runtime.pipeline.respond(RecommendRequest(user, 5))
        return {"lengths": {a: s.history_len for a, s in resolver.slots.items()},
                "states": states, "events": events, "vector": vector, "direct": direct[0],
                "reasons": reasons, "answer": answer,
                "rows": {a: [resolver.slots[a].item_rows[i] for i in events] for a in states}}

    seen = run(settings(redis_url=redis_url, experiment_file=to_challenger), refs, scenario)
    assert seen["lengths"]["challenger"] == CHALLENGER_HISTORY_LEN < seen["lengths"]["champion"]
    for alias, state in seen["states"].items():
        length = seen["lengths"][alias]
        assert state.history.shape == (length,)
        assert state.history.tolist() == seen["rows"][alias][-length:]  # the newest events
    np.testing.assert_allclose(seen["vector"], seen["direct"], rtol=1e-6)
    assert seen["reasons"] == []
    answer = seen["answer"]
    assert answer.fields["variant"] == "treatment" and not answer.result["degraded"]
    newest = seen["events"][-CHALLENGER_HISTORY_LEN:]  # what the challenger reads as history
    assert not set(newest) & {i["item_id"] for i in answer.result["items"]}


def test_the_user_tower_times_out_at_its_own_setting(refs: list[ModelRefs]) -> None:
    """RECSYS_TOWER_TIMEOUT_MS, not the retrieval timeout, bounds the tower: a hung tower costs
    0.1 s here although retrieval may take 2 s."""
    config = settings(tower_timeout_ms=100.0, retrieval_timeout_ms=2000.0,
                      faults="user_tower:timeout")

    async def scenario(runtime: Runtime) -> tuple[float, float, list[str], np.ndarray]:
        resolver = runtime.pipeline.resolver
        slot = resolver.champion
        reasons: list[str] = []
        state = await resolver.user_state(slot, "u1", np.zeros(0, np.int64), reasons)
        started = time.perf_counter()
        vector = await resolver.user_vector(slot, state, reasons)
        return slot.tower_timeout_s, time.perf_counter() - started, reasons, vector

    timeout_s, took_s, reasons, vector = run(config, refs[:1], scenario)
    assert timeout_s == 0.1
    assert 0.1 <= took_s < 1.0
    assert reasons == ["user_tower_timeout"]
    assert np.isclose(np.linalg.norm(vector), 1.0, atol=1e-5)  # the mean-of-items stand-in


def test_ids_resolve_on_the_slot_that_serves_the_request(refs: list[ModelRefs],
                                                          to_challenger: Path) -> None:
    async def scenario(runtime: Runtime) -> tuple[Any, ...]:
        resolver = runtime.pipeline.resolver
        challenger = resolver.slots["challenger"]
        item = str(challenger.catalog.item_ids[3])
        genre = challenger.catalog.genre_vocab[0]
        resolved = resolver.resolve(RecommendRequest("anyone", 5, recent_items=(item,),
                                                     include_categories=(genre,)))
        with pytest.raises(UnknownIdError) as caught:
            resolver.resolve(RecommendRequest("anyone", 5, exclude_items=("nope", "nah")))
        return resolved, challenger, item, caught.value

    resolved, challenger, item, error = run(settings(experiment_file=to_challenger), refs,
                                            scenario)
    assert resolved.slot is challenger and resolved.variant == "treatment"
    assert resolved.recent.tolist() == [challenger.item_rows[item]]
    assert resolved.include_genres is not None and resolved.include_genres.tolist() == [0]
    assert resolved.exclude_genres is None and resolved.excluded.size == 0
    assert error.field == "exclude_item_ids" and "'nope', 'nah'" in str(error)


def test_a_served_model_set_requires_a_champion() -> None:
    from recsys.experiments.routing import Router

    with pytest.raises(ValueError, match=r"a champion model slot is required, got \[\]"):
        ServedModels({}, Router())


def test_user_state_knows_when_the_users_latest_event_was(redis_url: str,
                                                          refs: list[ModelRefs]) -> None:
    """The snapshot's time of a known user's last event, a later recorded event's, the
    request's recent items as now, and nothing for a user never seen: what the ranker's
    hours_since_last_event is computed from (UserState.context)."""
    async def scenario(runtime: Runtime) -> dict[str, Any]:
        resolver = runtime.pipeline.resolver
        slot = resolver.champion
        users = slot.embedding.users
        assert users is not None and users.last_event_times is not None
        quiet, active = str(users.user_ids[-1]), str(users.user_ids[-2])
        item = str(slot.catalog.item_ids[1])
        later = float(users.last_event_times[-2]) + 3600.0
        await runtime.event_recorder.record_event(active, item, "view", later)
        none = np.zeros(0, np.int64)
        started = time.time()
        states = {"quiet": await resolver.user_state(slot, quiet, none, []),
                  "active": await resolver.user_state(slot, active, none, []),
                  "recent": await resolver.user_state(slot, quiet, np.array([1]), []),
                  "unseen": await resolver.user_state(slot, f"new-{time.time_ns()}", none, [])}
        return {"states": states, "snapshot": float(users.last_event_times[-1]), "later": later,
                "started": started, "ended": time.time()}

    seen = run(settings(redis_url=redis_url), refs[:1], scenario)
    states = seen["states"]
    assert states["quiet"].last_event_time == seen["snapshot"]
    assert states["active"].last_event_time == seen["later"]
    assert seen["started"] <= states["recent"].last_event_time <= seen["ended"]
    assert states["unseen"].last_event_time is None
    context = states["quiet"].context(Context(hour=3), now=seen["snapshot"] + 7200.0)
    assert context == Context(hour=3, seconds_since_last_event=7200.0)
    assert states["unseen"].context(Context(), now=0.0).seconds_since_last_event is None
