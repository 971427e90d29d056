"""POST /similar_items in process: an item's neighbours in the champion's index."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from recsys.app.models_file import ModelRefs
from recsys.app.runtime import Runtime
from recsys.errors import NotFoundError
from tests.support.runtime import serve, settings


def test_neighbours_leave_the_item_out_and_come_best_first(refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> tuple[dict[str, Any], Any]:
        slot = runtime.pipeline.resolver.champion
        item = str(slot.catalog.item_ids[5])
        return await runtime.similar_items.find_similar(item, 7), slot

    answer, slot = serve(settings(None), refs[:1], scenario)
    item = answer["item_id"]
    found = [i["item_id"] for i in answer["items"]]
    assert len(found) == 7 and item not in found and len(set(found)) == 7
    assert [i["rank"] for i in answer["items"]] == list(range(1, 8))
    vectors = slot.embedding.item_vectors
    expected = [round(float(vectors[slot.item_rows[f]] @ vectors[slot.item_rows[item]]), 6)
                for f in found]
    assert [i["score"] for i in answer["items"]] == pytest.approx(expected, abs=2e-6)
    assert expected == sorted(expected, reverse=True)
    assert answer["model_versions"] == refs[0].versions
    # read from training's neighbour table, which holds the same items
    table = slot.neighbours.table
    assert table is not None and slot.neighbours.reads_table(7)
    assert sorted(slot.item_rows[f] for f in found) == sorted(table[slot.item_rows[item], :7])


def test_an_unknown_item_is_not_found(refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> None:
        with pytest.raises(NotFoundError, match="item_id: unknown item id 'nope'") as caught:
            await runtime.similar_items.find_similar("nope", 5)
        assert caught.value.field == "item_id"

    serve(settings(None), refs[:1], scenario)


def test_k_above_the_catalogue_returns_every_other_item(refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> tuple[dict[str, Any], int]:
        slot = runtime.pipeline.resolver.champion
        return (await runtime.similar_items.find_similar(str(slot.catalog.item_ids[1]), 10_000),
                slot.catalog.size)

    answer, size = serve(settings(None), refs[:1], scenario)
    assert len(answer["items"]) == size - 1
    assert np.all(np.diff([i["score"] for i in answer["items"]]) <= 0)
