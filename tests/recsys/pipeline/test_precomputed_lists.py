"""/recommend with the precomputed tier (RECSYS_PRECOMPUTED_TIER) on real models and a real Redis:
what it answers, what it leaves to the models (events since the batch, promoted models, requests
with more than a user id and k), and that with the setting off it is never read."""
from __future__ import annotations

import time
from typing import Any

import pytest
from pydantic import ValidationError

from recsys.app.models_file import ModelRefs
from recsys.app.runtime import Runtime
from recsys.context import Context
from recsys.models.bundles import EmbeddingBundle
from recsys.models.registry_client import CHAMPION
from recsys.pipeline.precomputed_lists import answerable
from recsys.pipeline.request import RecommendRequest
from recsys.pipeline.resolver import Routed
from recsys.stores.precomputed import PrecomputedList
from tests.support.runtime import USER, K, Recorder, ids, recommend, serve, settings


async def precompute(runtime: Runtime, user: str = USER, k: int = K) -> dict[str, Any]:
    """What the batch job stores for `user`, its items reversed: a list the models would not
    compute, so an answer with them came from the tier."""
    pipeline, tier = runtime.pipeline, runtime.precomputed
    assert tier is not None
    slot = pipeline.resolver.champion
    resolved = pipeline.resolver.resolve(RecommendRequest(user, k), Routed(CHAMPION, slot))
    computed = await pipeline.compute(resolved, time.perf_counter())
    stored = {**computed, "items": [{**item, "rank": rank + 1} for rank, item
                                    in enumerate(reversed(computed["items"]))]}
    [generation] = await tier.generations([user])
    await tier.write(slot.versions, [PrecomputedList(user, generation, k, stored)], 60.0)
    return stored


def outcomes(recorder: Recorder) -> list[str]:
    return [labels["outcome"] for labels in recorder.named("precomputed")]


def test_a_precomputed_list_answers_a_miss_then_the_cache_keeps_it(
        redis_url: str, refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> tuple[Any, ...]:
        stored = await precompute(runtime)
        return stored, await recommend(runtime), await recommend(runtime), \
            await recommend(runtime, k=4)

    recorder = Recorder()
    stored, first, again, shorter = serve(settings(redis_url, precomputed_tier=True), refs,
                                          scenario, recorder)
    assert first["cache"] == "precomputed" and ids(first) == ids(stored)
    assert first["items"] == stored["items"] and first["model_versions"] == refs[0].versions
    assert again["cache"] == "l1" and ids(again) == ids(stored)
    assert shorter["cache"] == "precomputed" and ids(shorter) == ids(stored)[:4]
    assert outcomes(recorder) == ["hit", "hit"]


def test_an_event_since_the_batch_retires_the_list(redis_url: str,
                                                   refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> tuple[Any, ...]:
        stored = await precompute(runtime)
        before = await recommend(runtime)
        item = ids(before)[0]
        await runtime.event_recorder.record_event(USER, item, "click", time.time())
        return stored, before, await recommend(runtime), item

    recorder = Recorder()
    stored, before, after, clicked = serve(settings(redis_url, precomputed_tier=True), refs,
                                           scenario, recorder)
    assert before["cache"] == "precomputed"
    assert after["cache"] == "miss" and ids(after) != ids(stored)
    assert clicked not in ids(after)  # computed with the new event: a seen item is not shown
    assert outcomes(recorder) == ["hit", "stale"]


def test_promoted_models_never_read_the_old_models_lists(redis_url: str,
                                                         refs: list[ModelRefs]) -> None:
    champion, challenger = refs
    promoted = ModelRefs(CHAMPION, challenger.paths, challenger.versions)
    config = settings(redis_url, precomputed_tier=True)
    serve(config, [champion], precompute)

    recorder = Recorder()
    answer = serve(config, [promoted], recommend, recorder)
    assert answer["cache"] == "miss" and answer["model_versions"] == challenger.versions
    assert outcomes(recorder) == ["miss"]
    # the old champion, back (a rollback), finds its lists again
    assert serve(config, [champion], recommend)["cache"] == "precomputed"


def test_with_the_setting_off_the_tier_is_never_read(redis_url: str,
                                                     refs: list[ModelRefs]) -> None:
    serve(settings(redis_url, precomputed_tier=True), refs, precompute)

    recorder = Recorder()

    async def scenario(runtime: Runtime) -> dict[str, Any]:
        assert runtime.precomputed is None
        return await recommend(runtime)

    answer = serve(settings(redis_url), refs, scenario, recorder)
    assert answer["cache"] == "miss" and not recorder.named("precomputed")


@pytest.mark.parametrize("field", ["recent_items", "context", "explain", "exclude_items",
                                   "include_categories"])
def test_requests_with_more_than_a_user_and_k_are_computed(
        redis_url: str, refs: list[ModelRefs], champion: EmbeddingBundle, field: str) -> None:
    item, genre = str(champion.catalog.item_ids[1]), str(champion.catalog.genre_vocab[0])
    fields = {"recent_items": (item,), "context": Context(hour=9), "explain": True,
              "exclude_items": (item,), "include_categories": (genre,)}
    request = {field: fields[field]}
    assert not answerable(RecommendRequest(USER, K, **request))

    async def scenario(runtime: Runtime) -> dict[str, Any]:
        await precompute(runtime)
        return await recommend(runtime, **request)

    recorder = Recorder()
    answer = serve(settings(redis_url, precomputed_tier=True), refs, scenario, recorder)
    assert answer["cache"] == "miss" and not recorder.named("precomputed")


def test_the_tier_needs_redis() -> None:
    with pytest.raises(ValidationError, match="RECSYS_PRECOMPUTED_TIER=true needs "
                                              "RECSYS_REDIS_URL"):
        settings(None, precomputed_tier=True)
