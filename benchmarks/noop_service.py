"""The framework floor: a BentoML service with /recommend's signature and response shape, no work.

Same request validation (pydantic fields of service.py), same worker and traffic settings, a
canned response of the same size as a real k-item answer, encoded the way the service encodes
its own (a JSONResponse, declared through output_spec), so what it costs is BentoML itself.
"""
from __future__ import annotations

from typing import Annotated

import bentoml
from pydantic import Field
from starlette.responses import JSONResponse

from recsys.heap import freeze_startup_heap
from recsys.schemas import Filters, ItemId, RecommendResponse, RequestContext
from recsys.settings import ServingSettings

_ITEMS = [{"item_id": f"i{n}", "title": f"Galaxy Robot i{n}", "score": 0.5, "rank": n + 1,
           "sources": ["ann"]} for n in range(100)]


@bentoml.service(name="noop", traffic={"timeout": 10, "max_concurrency": 256},
                 workers=ServingSettings().workers)  # RECSYS_WORKERS, as the service reads it
class Noop:
    @bentoml.on_startup
    def settle(self) -> None:
        freeze_startup_heap()  # as the service does: the floor gets the same process tuning

    @bentoml.api(output_spec=RecommendResponse)
    async def recommend(
        self, user_id: Annotated[str, Field(min_length=1, max_length=200)],
        k: Annotated[int, Field(gt=0)] = 10, recent_item_ids: list[ItemId] = [],  # noqa: B006
        context: RequestContext = RequestContext(), filters: Filters = Filters(),  # noqa: B008
        exclude_item_ids: list[ItemId] = [],  # noqa: B006  (BentoML reads defaults as schema)
    ) -> JSONResponse:
        return JSONResponse({"user_id": user_id, "items": _ITEMS[:k], "model_versions": {},
                             "ranker": "retrieval", "degraded": False, "degraded_reasons": [],
                             "variant": "noop", "cache": "none", "request_id": "0" * 32,
                             "latency_ms": 0.0})
