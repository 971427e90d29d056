"""POST /events in process: the event reaches the history, invalidates the user's cached results
and changes what is recommended; unknown items and a missing store are refused."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from recsys.app.assembly import build_runtime
from recsys.app.models_file import ModelRefs
from recsys.app.runtime import Runtime
from recsys.errors import StoreError, UnknownIdError
from recsys.telemetry import Telemetry
from tests.support.runtime import USER, K, ids, recommend, serve, settings


def test_new_event_invalidates_cache_and_excludes_the_item(redis_url: str,
                                                           refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> tuple[Any, ...]:
        before = await recommend(runtime)
        clicked = ids(before)[0]
        ack = await runtime.event_recorder.record_event(USER, clicked, "click", time.time())
        after = await recommend(runtime)
        assert runtime.history is not None
        return before, clicked, ack, after, await runtime.history.recent_items(USER, 10)

    before, clicked, ack, after, history = serve(settings(redis_url), refs, scenario)
    assert before["cache"] == "miss"
    assert ack == {"user_id": USER, "events_kept": 1, "cache_invalidated": True,
                   "duplicate": False}
    assert after["cache"] == "miss"
    assert clicked not in ids(after) and len(after["items"]) == K
    assert not after["degraded"]
    assert history == [clicked]


def test_a_retried_event_id_is_recorded_once_and_still_invalidates(
        redis_url: str, refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> tuple[Any, ...]:
        recorder = runtime.event_recorder
        clicked = ids(await recommend(runtime))[0]
        first = await recorder.record_event(USER, clicked, "click", 1.0, event_id="e-1")
        cached = (await recommend(runtime))["cache"], (await recommend(runtime))["cache"]
        retry = await recorder.record_event(USER, clicked, "click", 1.0, event_id="e-1")
        after_retry = (await recommend(runtime))["cache"]
        other = await recorder.record_event(USER, clicked, "view", 2.0, event_id="e-2")
        elsewhere = await recorder.record_event("someone-else", clicked, "view", 2.0,
                                                event_id="e-1")
        assert runtime.history is not None
        return (first, cached, retry, after_retry, other, elsewhere,
                await runtime.history.recent_items(USER, 10))

    first, cached, retry, after_retry, other, elsewhere, history = serve(
        settings(redis_url), refs, scenario)
    assert (first["events_kept"], first["duplicate"]) == (1, False)
    assert cached == ("miss", "l1")
    assert (retry["events_kept"], retry["duplicate"], retry["cache_invalidated"]) == \
        (1, True, True)
    assert after_retry == "miss"  # a retry invalidates again: its first try may not have
    assert (other["events_kept"], other["duplicate"]) == (2, False)  # another id: recorded
    assert elsewhere["duplicate"] is False  # ids are per user
    assert len(history) == 2


def test_event_for_unknown_item_is_rejected(redis_url: str, refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> None:
        with pytest.raises(UnknownIdError, match="item_id: unknown item id"):
            await runtime.event_recorder.record_event(USER, "nope", "click", 1.0)
        assert runtime.history is not None
        assert await runtime.history.recent_items(USER, 10) == []

    serve(settings(redis_url), refs, scenario)


def test_cold_start_user_gets_the_popular_items_then_the_models_once_events_arrive(
        redis_url: str, refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> tuple[Any, ...]:
        first = await recommend(runtime, "never-seen-before")
        await runtime.event_recorder.record_event("never-seen-before", ids(first)[0], "view", 1.0)
        catalog = runtime.pipeline.resolver.champion.catalog
        popular = [str(catalog.item_ids[row]) for row in catalog.popular_rows[:K]]
        return first, await recommend(runtime, "never-seen-before"), popular

    first, second, popular = serve(settings(redis_url), refs, scenario)
    assert ids(first) == popular and not first["degraded"] and first["ranker"] == "popularity"
    assert all(item["sources"] == ["popular"] for item in first["items"])
    assert [i["score"] for i in first["items"]] == sorted((i["score"] for i in first["items"]),
                                                          reverse=True)
    assert second["ranker"] == "ranker" and len(second["items"]) == K
    assert ids(first)[0] not in ids(second)  # the viewed item is never recommended again


def test_without_an_event_store_every_event_is_refused(refs: list[ModelRefs]) -> None:
    async def scenario() -> None:
        runtime = build_runtime(settings(None), refs[:1], Telemetry())
        try:
            with pytest.raises(StoreError, match="no event store configured"):
                await runtime.event_recorder.record_event(USER, "i1", "click", 1.0)
        finally:
            await runtime.aclose()

    asyncio.run(scenario())
