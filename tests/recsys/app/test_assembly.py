"""The wiring: which slots a process builds, with which adapters, stores and per-model facts."""
from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from devtools.faults import FaultInjectingScorer, FaultInjectingSource, FaultPlan
from recsys.app.assembly import WITHOUT_REDIS, RemoteModels, build_runtime
from recsys.app.models_file import ModelRefs
from recsys.app.runtime import Runtime
from recsys.models.bundles import RankerBundle
from recsys.pipeline.request import RecommendRequest
from recsys.pipeline.scorers import LocalScorer
from recsys.pipeline.towers import LocalUserTower
from recsys.settings import ServingSettings
from recsys.telemetry import Telemetry
from tests.support.fixtures_models import TrainedModels


@pytest.fixture(scope="module")
def refs(trained_models: TrainedModels) -> list[ModelRefs]:
    return [trained_models.refs("champion"), trained_models.refs("challenger")]


def built(settings: ServingSettings, refs: list[ModelRefs], **build: Any) -> Runtime:
    runtime = build_runtime(settings, refs, Telemetry(), **build)
    asyncio.run(runtime.aclose())  # nothing here serves: the stores' clients are closed again
    return runtime


class RemoteTower:
    async def encode(self, history: Any, attributes: Any) -> Any:
        raise AssertionError("not called while wiring")


class RemoteScorer:
    async def score(self, features: Any) -> Any:
        raise AssertionError("not called while wiring")


def test_the_champion_alone_serves_by_default(refs: list[ModelRefs]) -> None:
    runtime = built(ServingSettings(tower_timeout_ms=25.0), refs)
    resolver = runtime.pipeline.resolver

    assert set(resolver.slots) == {"champion"}
    slot = resolver.champion
    assert isinstance(slot.user_tower, LocalUserTower) and slot.embedding.user_tower is not None
    assert isinstance(slot.ranker.primary, LocalScorer)
    assert isinstance(slot.ranker.fallback, LocalScorer)
    assert slot.tower_timeout_s == 0.025 and slot.versions == refs[0].versions
    assert runtime.history is None and runtime.shadow is None
    assert resolver.vector_cache is None


def test_without_redis_it_says_so_and_keeps_its_in_process_cache(
        refs: list[ModelRefs], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="recsys.app.assembly"):
        runtime = built(ServingSettings(), refs)
    assert [r.getMessage() for r in caplog.records] == [WITHOUT_REDIS]
    assert runtime.history is None and runtime.canary is None
    request = RecommendRequest("1", 5)

    async def twice() -> list[str]:
        levels = [(await runtime.pipeline.respond(request)).fields["cache"] for _ in range(2)]
        await runtime.aclose()
        return levels

    assert asyncio.run(twice()) == ["miss", "l1"]


def test_an_experiment_or_shadow_scoring_loads_the_challenger(refs: list[ModelRefs],
                                                               tmp_path: Path) -> None:
    experiment = tmp_path / "experiments.json"
    experiment.write_text(json.dumps({"active": "ab", "experiments": [{"name": "ab", "variants": [
        {"name": "control", "alias": "champion"}, {"name": "treatment", "alias": "challenger"}]}]}))

    routed = built(ServingSettings(experiment_file=experiment), refs)
    shadowed = built(ServingSettings(shadow_fraction=0.5, shadow_log=str(tmp_path / "s.jsonl")),
                     refs)

    for runtime in (routed, shadowed):
        slots = runtime.pipeline.resolver.slots
        assert set(slots) == {"champion", "challenger"}
        assert slots["challenger"].history_len != slots["champion"].history_len
    assert routed.shadow is None and shadowed.shadow is not None


def test_model_services_replace_the_local_tower_and_ranker(refs: list[ModelRefs],
                                                           redis_url: str) -> None:
    remote = RemoteModels(RemoteTower(), RemoteScorer())
    runtime = built(ServingSettings(topology="services", redis_url=redis_url), refs[:1],
                    remote={"champion": remote})
    slot = runtime.pipeline.resolver.champion

    assert slot.user_tower is remote.user_tower and slot.ranker.primary is remote.scorer
    assert isinstance(slot.ranker.fallback, LocalScorer)  # the fallback stays in process
    assert slot.embedding.user_tower is None  # its catalogue-sized session is not loaded
    assert runtime.pipeline.resolver.vector_cache is runtime.cache is not None


def test_a_fault_plan_wraps_only_the_stages_it_names(refs: list[ModelRefs]) -> None:
    runtime = built(ServingSettings(), refs[:1], wrap=FaultPlan.parse("ranker:error,ann:error"))
    slot = runtime.pipeline.resolver.champion

    assert isinstance(slot.ranker.primary, FaultInjectingScorer)
    assert isinstance(slot.ranker.fallback, LocalScorer)
    assert isinstance(slot.user_tower, LocalUserTower)
    wrapped = {s.name: isinstance(s, FaultInjectingSource) for s in slot.retriever.sources}
    assert wrapped == {"ann": True, "popular": False, "item2item": False}


def test_info_reports_each_slots_models_and_facts(refs: list[ModelRefs], tmp_path: Path) -> None:
    settings = ServingSettings(shadow_fraction=0.5, shadow_log=str(tmp_path / "s.jsonl"))
    info = built(settings, refs).info(settings)

    assert info["models"] == {"champion": refs[0].versions, "challenger": refs[1].versions}
    assert info["history_len"]["challenger"] < info["history_len"]["champion"]
    for alias, ref in (("champion", refs[0]), ("challenger", refs[1])):  # as training chose it
        policy = RankerBundle.load(ref.paths["ranker"]).policy
        assert info["ranking_policy"][alias] == {**policy.to_metadata(),
                                                 "described": policy.describe()}
    ranked = ServingSettings(ranking_policy="rank_all")
    assert built(ranked, refs).info(ranked)["ranking_policy"]["champion"]["use_ranker"] is True
    assert info["limits"] == {"max_k": 100, "max_list_items": 1000, "max_body_bytes": 1_048_576}


def test_a_part_that_fails_to_close_is_logged_and_the_parts_after_it_still_close(
        refs: list[ModelRefs], redis_url: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Under load a Redis socket can take longer than its timeout to close (CI saw the canary
    store's time out after 0.5 s): shutting down says so and still closes the rest."""
    runtime = build_runtime(ServingSettings(redis_url=redis_url), refs[:1], Telemetry())
    assert runtime.cache is not None and runtime.history is not None
    history_close, closed = runtime.history.aclose, []

    async def times_out() -> None:
        raise RedisTimeoutError("Timed out closing connection after 0.5")

    async def history_closes() -> None:
        await history_close()
        closed.append("history")

    monkeypatch.setattr(runtime.cache, "aclose", times_out)
    monkeypatch.setattr(runtime.history, "aclose", history_closes)
    with caplog.at_level(logging.WARNING, logger="bentoml.recsys.runtime"):
        asyncio.run(runtime.aclose())

    assert closed == ["history"]
    assert [r.getMessage() for r in caplog.records] == [
        ("closing the cache failed (TimeoutError: Timed out closing connection after 0.5), "
         "the other parts are closed")]
