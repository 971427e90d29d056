"""BentoML service: wiring only. The request path lives in recsys/pipeline/, the HTTP edge
(validation, limits, error bodies) in serving/."""
from __future__ import annotations

import time
from typing import Any

import bentoml
from starlette.responses import Response

with bentoml.importing():
    from recsys.app.assembly import RemoteModels, build_live_runtime, build_runtime
    from recsys.app.heap import freeze_startup_heap
    from recsys.app.models_file import ModelRefs, read_models_file
    from recsys.app.prometheus import PrometheusTelemetry
    from recsys.experiments.canary import Guards
    from recsys.settings import ServingSettings
    from serving.edge import install_edge
    from serving.errors import answers_errors
    from serving.fault_injection import fault_plan
    from serving.model_services import declare_models, define_model_services, model_path
    from serving.remote import RemoteScorer, RemoteUserTower
    from serving.responses import ResponseEncoder
    from serving.schemas import (
        AdminCanaryBody,
        AdminRollbackBody,
        EventBody,
        EventResponse,
        InfoBody,
        RankBody,
        RankResponse,
        RecommendBody,
        RecommendResponse,
        SimilarItemsBody,
        SimilarItemsResponse,
    )
    from serving.search_schemas import SearchBody, SearchResponse
    from serving.tracing import service_tracing, warn_if_untraced

SETTINGS = ServingSettings()
LIVE = SETTINGS.model_source == "registry"  # follow the registry's aliases, else pinned tags
MODEL_TAGS = {} if LIVE else read_models_file(SETTINGS.models_file)  # alias -> kind -> tag
MODEL_SERVICES = define_model_services(SETTINGS, MODEL_TAGS)


class RecommenderApi:
    if SETTINGS.topology == "services":
        ranker_service = bentoml.depends(MODEL_SERVICES.ranker)
        tower_service = bentoml.depends(MODEL_SERVICES.tower)

    def __init__(self) -> None:
        telemetry, wrap = PrometheusTelemetry(), fault_plan(SETTINGS.faults)
        if LIVE:
            self.runtime = build_live_runtime(SETTINGS, telemetry, wrap=wrap)
        else:
            refs = [ModelRefs(alias, {k: model_path(self, alias, k) for k in tags},
                              {k: str(tags[k]) for k in tags})
                    for alias, tags in MODEL_TAGS.items()]
            remote = {alias: RemoteModels(RemoteUserTower(self.tower_service, alias),
                                          RemoteScorer(self.ranker_service, alias))
                      for alias in MODEL_TAGS} if SETTINGS.topology == "services" else None
            self.runtime = build_runtime(SETTINGS, refs, telemetry, remote=remote, wrap=wrap)
        self.encoder = ResponseEncoder()
        self.ready = False

    @bentoml.on_startup
    async def warm_up(self) -> None:
        warn_if_untraced(SETTINGS)
        await self.runtime.start()
        freeze_startup_heap()  # models and imports: out of every later full GC's walk
        self.ready = True

    @bentoml.on_shutdown
    async def close(self) -> None:
        await self.runtime.aclose()

    def __is_ready__(self) -> bool:
        return self.ready

    # The answer is encoded here, not by BentoML: its path for a returned dict cost 171 against
    # 18 µs a response (benchmarks/README.md), and a cached result is encoded once.
    @bentoml.api(input_spec=RecommendBody, output_spec=RecommendResponse)
    @answers_errors
    async def recommend(self, body: RecommendBody) -> Response:
        answer = await self.runtime.pipeline.respond(body.to_request())
        return Response(self.encoder.encode(answer), media_type="application/json")

    @bentoml.api(input_spec=SearchBody, output_spec=SearchResponse)
    @answers_errors
    async def search(self, body: SearchBody) -> Response:
        answer = await self.runtime.search.respond(body.to_request())
        return Response(self.encoder.encode(answer), media_type="application/json")

    @bentoml.api(input_spec=SimilarItemsBody, output_spec=SimilarItemsResponse)
    @answers_errors
    async def similar_items(self, body: SimilarItemsBody) -> SimilarItemsResponse:
        return SimilarItemsResponse.model_validate(
            await self.runtime.similar_items.find_similar(body.item_id, body.k))

    @bentoml.api(input_spec=RankBody, output_spec=RankResponse)
    @answers_errors
    async def rank(self, body: RankBody) -> RankResponse:
        return RankResponse.model_validate(await self.runtime.item_ranker.rank_items(
            body.user_id, tuple(body.item_ids), body.context.to_context()))

    @bentoml.api(input_spec=EventBody, output_spec=EventResponse)
    @answers_errors
    async def events(self, body: EventBody) -> EventResponse:
        timestamp = body.timestamp if body.timestamp is not None else time.time()
        return EventResponse.model_validate(await self.runtime.event_recorder.record_event(
            body.user_id, body.item_id, body.type, timestamp, event_id=body.event_id))

    @bentoml.api(input_spec=InfoBody)
    async def info(self, body: InfoBody) -> dict[str, Any]:
        return self.runtime.info(SETTINGS)

    # The admin endpoints answer only "Authorization: Bearer $RECSYS_ADMIN_TOKEN" (serving/edge.py)
    @bentoml.api(route="/admin/canary", input_spec=AdminCanaryBody)
    @answers_errors
    async def admin_canary(self, body: AdminCanaryBody) -> dict[str, Any]:
        canary = self.runtime.canary_control()
        if body.action == "start":
            await canary.begin(tuple(body.stages) if body.stages else None,
                               Guards(**body.guards.model_dump()))
        elif body.action != "status":
            await canary.command(body.action)
        return await canary.status(body.verdicts)

    @bentoml.api(route="/admin/rollback", input_spec=AdminRollbackBody)
    @answers_errors
    async def admin_rollback(self, body: AdminRollbackBody) -> dict[str, Any]:
        return {"champion": await self.runtime.canary_control().rollback()}


Recommender = bentoml.service(name="recommender", workers=SETTINGS.workers,
                              tracing=service_tracing(SETTINGS))(
    declare_models(RecommenderApi, MODEL_TAGS, ("embedding", "ranker", "fallback_ranker")))
install_edge(Recommender, SETTINGS)
