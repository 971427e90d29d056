"""The framework floor: a BentoML service with /recommend's contract and response shape, no work.

Its /recommend takes the very request body type the service declares (serving.schemas, so the two
cannot drift; tests/benchmarks check that every API here matches service.py's), behind the same
HTTP edge (validation, limits, error bodies) and with the same worker settings, and answers a
canned response of the size of a real k-item answer, encoded as the service encodes its own.
What it costs is BentoML and the edge.
"""
from __future__ import annotations

import bentoml
from starlette.responses import Response

from recsys.app.heap import freeze_startup_heap
from recsys.settings import ServingSettings
from serving.edge import install_edge
from serving.responses import dumps
from serving.schemas import RecommendBody, RecommendResponse

SETTINGS = ServingSettings()  # RECSYS_WORKERS and the request limits, as the service reads them
_ITEMS = [{"item_id": f"i{n}", "title": f"Galaxy Robot i{n}", "score": 0.5, "rank": n + 1,
           "sources": ["ann"]} for n in range(100)]


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


Noop = bentoml.service(name="noop", workers=SETTINGS.workers)(NoopApi)
install_edge(Noop, SETTINGS)
