"""POST /rank in process: the routed slot's ranker scores the items a client names, in order,
degrading like /recommend."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from recsys.app.models_file import ModelRefs
from recsys.app.runtime import Runtime
from recsys.context import Context
from recsys.errors import UnknownIdError
from recsys.features import user_ranker_inputs
from tests.support.runtime import USER, serve, settings


def test_scores_come_in_the_order_asked_and_are_the_rankers(refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> tuple[dict[str, Any], tuple[str, ...], np.ndarray]:
        resolver = runtime.pipeline.resolver
        slot = resolver.champion
        asked = tuple(str(i) for i in slot.catalog.item_ids[[9, 2, 7]])
        answer = await runtime.item_ranker.rank_items(USER, asked, Context(device="web"))
        rows = slot.rows_of(asked, "item_ids")
        state = await resolver.user_state(slot, USER, rows[:0], [])
        user = await resolver.user_vector(slot, state, [])
        features = user_ranker_inputs(user, state.history, rows, slot.embedding.item_vectors,
                                      slot.catalog, Context(device="web"), slot.scaler)
        return answer, asked, await slot.ranker.primary.score(features)

    answer, asked, expected = serve(settings(None), refs[:1], scenario)
    assert [s["item_id"] for s in answer["scores"]] == list(asked)
    assert [s["score"] for s in answer["scores"]] == [round(float(s), 6) for s in expected]
    assert (answer["ranker"], answer["degraded"], answer["variant"]) == ("ranker", False,
                                                                         "control")


def test_a_failing_ranker_falls_back_and_says_so(refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> dict[str, Any]:
        slot = runtime.pipeline.resolver.champion
        asked = tuple(str(i) for i in slot.catalog.item_ids[1:4])
        return await runtime.item_ranker.rank_items(USER, asked, Context())

    answer = serve(settings(None, faults="ranker:error"), refs[:1], scenario)
    assert (answer["ranker"], answer["degraded_reasons"]) == ("fallback", ["ranker_error"])


def test_an_unknown_item_names_the_field(refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> None:
        with pytest.raises(UnknownIdError, match=r"item_ids: unknown item id\(s\) 'nope'"):
            await runtime.item_ranker.rank_items(USER, ("nope",), Context())

    serve(settings(None), refs[:1], scenario)
