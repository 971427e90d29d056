"""The framework floor: a BentoML service with /recommend's and /search's contracts and response
shapes, no work.

Its APIs take the very request body types the service declares (serving.schemas and
serving.search_schemas, so the two cannot drift; tests/benchmarks check that every API here
matches service.py's), behind the same HTTP edge (validation, limits, error bodies) and with the
same worker settings, and answer a canned response of the size of a real k-item (page_size-item)
answer, encoded as the service encodes its own. What it costs is BentoML and the edge.
"""
from __future__ import annotations

from typing import Any

import bentoml
from starlette.responses import Response

from recsys.app.heap import freeze_startup_heap
from recsys.settings import ServingSettings
from serving.edge import install_edge
from serving.responses import dumps
from serving.schemas import RecommendBody, RecommendResponse
from serving.search_schemas import SearchBody, SearchResponse
from serving.tracing import service_tracing

SETTINGS = ServingSettings()  # RECSYS_WORKERS and the request limits, as the service reads them
_ITEMS = [{"item_id": f"i{n}", "title": f"Galaxy Robot i{n}", "score": 0.5, "rank": n + 1,
           "sources": ["ann"]} for n in range(100)]
_FOUND = [{"item_id": f"i{n}", "title": f"Galaxy Robot i{n}", "score": 0.5, "rank": n + 1,
           "retrievers": ["bm25", "vector"]} for n in range(100)]
_UNDERSTOOD: dict[str, Any] = {"words": ["galaxy", "robot"], "corrections": {}, "categories": [],
               "year_from": None, "year_to": None}


class NoopApi:
    @bentoml.on_startup
    def settle(self) -> None:
        freeze_startup_heap()  # as the service does: the floor gets the same process tuning

    @bentoml.api(input_spec=RecommendBody, output_spec=RecommendResponse)
    async def recommend(self, body: RecommendBody) -> Response:
        return Response(dumps({
            "user_id": body.user_id, "items": _ITEMS[:body.k], "model_versions": {},
            "ranker": "retrieval", "degraded": False, "degraded_reasons": [], "variant": "noop",
            "cache": "none", "request_id": "0" * 32, "latency_ms": 0.0}),
            media_type="application/json")

    @bentoml.api(input_spec=SearchBody, output_spec=SearchResponse)
    async def search(self, body: SearchBody) -> Response:
        return Response(dumps({
            "query": body.query, "items": _FOUND[:body.page_size], "total": 200,
            "page": body.page, "page_size": body.page_size, "understood": _UNDERSTOOD,
            "personalised": body.user_id is not None, "ranking": "fusion", "model_versions": {},
            "degraded": False, "degraded_reasons": [], "cache": "none", "request_id": "0" * 32,
            "latency_ms": 0.0}), media_type="application/json")


Noop = bentoml.service(name="noop", workers=SETTINGS.workers,
                       tracing=service_tracing(SETTINGS))(NoopApi)
install_edge(Noop, SETTINGS)
