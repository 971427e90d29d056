"""Following the registry in process, against a real MLflow tracking server and Redis: the set
the aliases point to is served, a moved alias is swapped in whole (in-flight requests finish on
the old set), a set that fails to load is not served and says why."""
from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recsys.app.assembly import build_live_runtime
from recsys.app.runtime import Runtime
from recsys.errors import ArtifactError
from recsys.models import artifacts
from recsys.pipeline.request import RecommendRequest
from recsys.settings import ServingSettings
from registry import CHALLENGER, CHAMPION, ModelNames
from tests.support.fixtures_models import TrainedModels
from tests.support.registry_server import RegistryServer, registry_copy
from tests.support.runtime import Recorder


@pytest.fixture
def server(trained_models: TrainedModels, tmp_path: Path) -> Iterator[RegistryServer]:
    """A store of its own per test: the tests move its aliases."""
    with registry_copy(trained_models, tmp_path / "registry") as server:
        yield server


def settings(server: RegistryServer, tmp_path: Path, **overrides: Any) -> ServingSettings:
    values: dict[str, Any] = {
        "model_source": "registry", "registry_uri": server.url,
        "model_cache_dir": tmp_path / "model-cache", "budget_ms": 5000.0,
        "tower_timeout_ms": 1000.0, "retrieval_timeout_ms": 2000.0,
        "ranking_timeout_ms": 2000.0, "redis_timeout_ms": 500.0}
    return ServingSettings(**(values | overrides))


def tags(trained_models: TrainedModels, alias: str) -> dict[str, str]:
    return trained_models.refs(alias).versions


async def follow(runtime: Runtime) -> bool:
    """One poll of the registry, as the background follower makes every few seconds."""
    assert runtime.live is not None
    return await runtime.live.check(runtime.pipeline)


async def answer(runtime: Runtime, user: str = "u1") -> dict[str, Any]:
    found = await runtime.pipeline.respond(RecommendRequest(user, 5))
    return {**found.result, **found.fields}


def test_serves_the_champion_then_a_promotion_without_a_restart(
        server: RegistryServer, trained_models: TrainedModels, tmp_path: Path) -> None:
    telemetry = Recorder()

    async def scenario() -> dict[str, Any]:
        runtime = build_live_runtime(settings(server, tmp_path), telemetry)
        try:
            before = await answer(runtime)
            in_flight = runtime.pipeline.resolver.resolve(RecommendRequest("u2", 5))
            unchanged = await follow(runtime)
            server.registry().promote(CHALLENGER)  # the notebook's (and the CLI's) promotion
            swapped = await follow(runtime)
            finished = await runtime.pipeline.compute(in_flight, 0.0)  # started before it
            after = await answer(runtime)
            return {"before": before, "unchanged": unchanged, "swapped": swapped,
                    "finished": finished, "after": after, "info": runtime.info(
                        settings(server, tmp_path))["model_source"]}
        finally:
            await runtime.aclose()

    seen = asyncio.run(scenario())
    assert seen["before"]["model_versions"] == tags(trained_models, CHAMPION)
    assert seen["unchanged"] is False and seen["swapped"] is True
    assert seen["finished"]["model_versions"] == tags(trained_models, CHAMPION)
    assert seen["after"]["model_versions"] == tags(trained_models, CHALLENGER)
    info = seen["info"]
    assert info["source"] == "registry" and info["last_failure"] is None
    assert info["serving"] == {CHAMPION: tags(trained_models, CHALLENGER)}
    assert info["last_swap"]["from"] == {CHAMPION: tags(trained_models, CHAMPION)}
    assert [labels for labels in telemetry.named("model_served") if labels["serving"] == "0"]


def test_a_rollback_is_live_too(server: RegistryServer, trained_models: TrainedModels,
                                tmp_path: Path) -> None:
    async def scenario() -> list[dict[str, str]]:
        runtime = build_live_runtime(settings(server, tmp_path), Recorder())
        served = []
        try:
            for move in (lambda: server.registry().promote(CHALLENGER),
                         server.registry().rollback):
                move()
                assert await follow(runtime)
                served.append((await answer(runtime))["model_versions"])
        finally:
            await runtime.aclose()
        return served

    promoted, rolled_back = asyncio.run(scenario())
    assert promoted == tags(trained_models, CHALLENGER)
    assert rolled_back == tags(trained_models, CHAMPION)


def test_a_set_that_fails_to_load_is_not_served_and_says_why(
        server: RegistryServer, trained_models: TrainedModels, tmp_path: Path) -> None:
    """The challenger's ranker file altered in the artifact store: the checksum refuses it."""
    telemetry = Recorder()
    ranker = trained_models.refs(CHALLENGER).paths["ranker"]
    stored = next(p for p in (trained_models.root / "mlstore").rglob(artifacts.SCALER)
                  if p.parent.name == ranker.name and p.read_bytes() ==
                  (ranker / artifacts.SCALER).read_bytes() and "models" in p.parts)
    original = stored.read_bytes()

    async def scenario() -> tuple[bool, bool, dict[str, Any], dict[str, Any]]:
        runtime = build_live_runtime(settings(server, tmp_path), telemetry)
        try:
            server.registry().promote(CHALLENGER)
            stored.write_bytes(original + b" ")
            failed = await follow(runtime)
            again = await runtime.live.check(runtime.pipeline)  # same target: not tried again
            info = runtime.info(settings(server, tmp_path))["model_source"]
            return failed, again, info, await answer(runtime)
        finally:
            stored.write_bytes(original)
            await runtime.aclose()

    failed, again, info, served = asyncio.run(scenario())
    assert failed is False and again is False
    assert served["model_versions"] == tags(trained_models, CHAMPION)  # the old set goes on
    assert info["last_failure"]["stage"] == "load"
    assert "checksum mismatch for scaler.json" in info["last_failure"]["error"]
    assert info["last_failure"]["target"] == {CHAMPION: tags(trained_models, CHALLENGER)}
    assert telemetry.named("model_load_failed") == [{"stage": "load", "error": "ArtifactError"}]


def test_aliases_read_mid_move_are_read_again_before_they_count_as_a_failure(
        server: RegistryServer, trained_models: TrainedModels, tmp_path: Path) -> None:
    """A promotion moves three aliases in three writes: a poll between them reads a ranker
    paired with another embedding. That is read again next poll; only a mismatch that stays is a
    failure."""
    registry = server.registry()
    challenger = registry.resolve(CHALLENGER)

    async def scenario() -> list[Any]:
        runtime = build_live_runtime(settings(server, tmp_path), Recorder())
        assert runtime.live is not None
        seen: list[Any] = []
        try:
            registry.client.set_registered_model_alias(challenger.names.ranker, CHAMPION,
                                                       challenger.ranker)  # one of three
            seen.append((await follow(runtime), runtime.live.state.last_failure))
            seen.append((await follow(runtime), runtime.live.state.last_failure["stage"]))
            registry.promote(CHALLENGER)  # the other two: the set is whole again
            seen.append((await follow(runtime), (await answer(runtime))["model_versions"]))
        finally:
            await runtime.aclose()
        return seen

    first, second, third = asyncio.run(scenario())
    assert first == (False, None)
    assert second == (False, "registry")
    assert third == (True, tags(trained_models, CHALLENGER))


def test_a_registry_that_stops_answering_leaves_the_set_serving(
        trained_models: TrainedModels, tmp_path: Path) -> None:
    async def scenario() -> tuple[bool, dict[str, Any], dict[str, Any]]:
        with registry_copy(trained_models, tmp_path / "registry") as server:
            config = settings(server, tmp_path)
            runtime = build_live_runtime(config, Recorder())
        try:  # the server is gone now
            checked = await follow(runtime)
            return checked, runtime.info(config)["model_source"], await answer(runtime)
        finally:
            await runtime.aclose()

    checked, info, served = asyncio.run(scenario())
    assert checked is False and served["model_versions"] == tags(trained_models, CHAMPION)
    assert info["last_failure"]["stage"] == "registry"
    assert "RegistryUnavailableError" in info["last_failure"]["error"]


def test_a_new_champion_takes_traffic_with_its_most_active_users_cached(
        server: RegistryServer, trained_models: TrainedModels, tmp_path: Path,
        redis_url: str) -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        runtime = build_live_runtime(settings(server, tmp_path, redis_url=redis_url,
                                               warm_users=5), Recorder())
        try:
            server.registry().promote(CHALLENGER)
            assert await follow(runtime)
            slot = runtime.pipeline.resolver.champion
            users = slot.most_active_users(6)
            levels = [(await runtime.pipeline.respond(RecommendRequest(u, 10))).fields["cache"]
                      for u in users]
            return users, levels
        finally:
            await runtime.aclose()

    _, levels = asyncio.run(scenario())
    assert levels[:5] == ["l1"] * 5 and levels[5] == "miss"  # the sixth was not prefilled


def test_without_a_champion_in_the_registry_start_up_says_what_to_do(
        server: RegistryServer, tmp_path: Path) -> None:
    config = settings(server, tmp_path)
    from recsys.app.assembly import ModelSetBuilder
    from recsys.app.live_models import LiveModels
    from recsys.models.registry_client import RegistryClient

    client = RegistryClient(server.url, tmp_path, names=ModelNames.with_prefix("none-").by_kind())
    live = LiveModels(client, ModelSetBuilder(config, Recorder()), config, Recorder())
    with pytest.raises(ArtifactError, match="no champion is registered in http://127.0.0.1"):
        live.initial()
    client.close()


def test_the_cache_directory_keeps_bundles_between_starts(
        server: RegistryServer, trained_models: TrainedModels, tmp_path: Path) -> None:
    config = settings(server, tmp_path)
    runtime = build_live_runtime(config, Recorder())
    asyncio.run(runtime.aclose())
    kept = sorted(p.name for p in config.model_cache_dir.iterdir())

    assert kept == sorted(tag.replace(":", "--") for tag in tags(trained_models, CHAMPION).values())
    shutil.rmtree(config.model_cache_dir / kept[0])
    runtime = build_live_runtime(config, Recorder())  # fetched again
    asyncio.run(runtime.aclose())
    assert sorted(p.name for p in config.model_cache_dir.iterdir()) == kept
