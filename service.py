"""BentoML service: wiring only. The request path lives in recsys/ (pipeline, retrieval, ranking)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import bentoml
from pydantic import Field
from starlette.responses import JSONResponse, Response

with bentoml.importing():
    import numpy as np

    from recsys.assembly import ModelRefs, build_runtime, read_models_file
    from recsys.bundles import RankerBundle, UserTowerBundle
    from recsys.errors import CacheError, RankingError, RecsysError
    from recsys.heap import freeze_startup_heap
    from recsys.request import InvalidRequestError, RecommendRequest
    from recsys.responses import ResponseEncoder
    from recsys.schemas import (
        EventType,
        Filters,
        ItemId,
        LimitError,
        RecommendResponse,
        RequestContext,
        check_limits,
    )
    from recsys.settings import ServingSettings
    from recsys.telemetry import PrometheusTelemetry

SETTINGS = ServingSettings()
MODEL_TAGS = read_models_file(SETTINGS.models_file)  # alias -> kind -> BentoML tag
RESOURCES = {"gpu": SETTINGS.gpu} if SETTINGS.gpu else {"cpu": "1"}
BATCHING = {"batchable": True, "batch_dim": 0, "max_batch_size": SETTINGS.max_batch_size,
            "max_latency_ms": SETTINGS.max_latency_ms} if SETTINGS.batching else {}
# A model service call fails with a BentoMLException (503 overload, 5xx) or, on the transport
# (a keep-alive connection the server closed), with an aiohttp error.
REMOTE_ERRORS = (bentoml.exceptions.BentoMLException, aiohttp.ClientError)


def _declare_models(cls: type, kinds: tuple[str, ...]) -> type:
    """Class attributes BentoModel(tag) so that `bentoml build` pins every model it serves."""
    for alias, tags in MODEL_TAGS.items():
        for kind in kinds:
            setattr(cls, f"model_{alias}_{kind}", bentoml.models.BentoModel(tags[kind]))
    return cls


def _path(service: object, alias: str, kind: str) -> Path:
    model = getattr(service, f"model_{alias}_{kind}")  # a service instance sees the stored model
    if isinstance(model, bentoml.models.BentoModel):
        model = model.resolve()
    return Path(model.path)


class _ModelService:
    """What both model services do at start-up (BentoML finds hooks on base classes too)."""

    @bentoml.on_startup
    def settle(self) -> None:
        freeze_startup_heap()


class RankerModel(_ModelService):
    """Batched ranker scoring, one API per alias (features [N, F] -> scores [N])."""

    def __init__(self) -> None:
        self.rankers = {a: RankerBundle.load(_path(self, a, "ranker"), threads=SETTINGS.onnx_threads,
                                             int8=SETTINGS.ranker_int8,
                                             prefer_gpu=bool(SETTINGS.gpu)) for a in MODEL_TAGS}

    @bentoml.api(**BATCHING)
    def score_champion(self, features: np.ndarray) -> np.ndarray:
        return self.rankers["champion"].score(features)

    @bentoml.api(**BATCHING)
    def score_challenger(self, features: np.ndarray) -> np.ndarray:
        return self.rankers.get("challenger", self.rankers["champion"]).score(features)


class UserTowerModel(_ModelService):
    """Batched user tower ([B, H + A] int64: history then attributes -> [B, D])."""

    def __init__(self) -> None:
        self.towers = {a: UserTowerBundle.load(_path(self, a, "embedding"),
                                               prefer_gpu=bool(SETTINGS.gpu))
                       for a in MODEL_TAGS}

    def _encode(self, alias: str, packed: np.ndarray) -> np.ndarray:
        bundle = self.towers.get(alias, self.towers["champion"])
        h = bundle.history_len
        return bundle.encode_users(packed[:, :h], packed[:, h:])

    @bentoml.api(**BATCHING)
    def encode_champion(self, packed: np.ndarray) -> np.ndarray:
        return self._encode("champion", packed)

    @bentoml.api(**BATCHING)
    def encode_challenger(self, packed: np.ndarray) -> np.ndarray:
        return self._encode("challenger", packed)


RankerService = bentoml.service(resources=RESOURCES, workers=1)(_declare_models(RankerModel, ("ranker",)))
UserTowerService = bentoml.service(resources=RESOURCES, workers=1)(
    _declare_models(UserTowerModel, ("embedding",)))


class RecommenderApi:
    if SETTINGS.topology == "services":
        ranker_service = bentoml.depends(RankerService)
        tower_service = bentoml.depends(UserTowerService)

    def __init__(self) -> None:
        refs = [ModelRefs(alias, {k: _path(self, alias, k) for k in tags},
                          {k: str(tags[k]) for k in tags}) for alias, tags in MODEL_TAGS.items()]
        rankers = towers = None
        if SETTINGS.topology == "services":
            rankers = {a: self._remote_ranker(a) for a in MODEL_TAGS}
            towers = {a: self._remote_tower(a) for a in MODEL_TAGS}
        self.runtime = build_runtime(SETTINGS, refs, PrometheusTelemetry(), rankers, towers)
        self.responses = ResponseEncoder()
        self.ready = False

    def _remote_ranker(self, alias: str):
        async def score(features: np.ndarray) -> np.ndarray:
            try:
                return await self.ranker_service.to_async.call(f"score_{alias}", features)
            except REMOTE_ERRORS as error:
                raise RankingError(f"ranker service: {error!r}") from error
        return score

    def _remote_tower(self, alias: str):
        async def encode(history: np.ndarray, attributes: np.ndarray) -> np.ndarray:
            packed = np.concatenate([history, attributes], axis=1)
            try:
                return await self.tower_service.to_async.call(f"encode_{alias}", packed)
            except REMOTE_ERRORS as error:  # the pipeline falls back to a mean-of-items vector
                raise RecsysError(f"user tower service: {error!r}") from error
        return encode

    @bentoml.on_startup
    async def warm_up(self) -> None:
        await self.runtime.start()
        freeze_startup_heap()  # models and imports: out of every later full GC's walk
        self.ready = True

    @bentoml.on_shutdown
    async def close(self) -> None:
        await self.runtime.aclose()

    def __is_ready__(self) -> bool:
        return self.ready

    # The answer is encoded here, not by BentoML: its path for a dict (validate, dump, dump to
    # JSON, and a JSON schema built per response for the media type) took 171 µs a response
    # against 18 µs for JSONResponse, side by side in one process, and a cached result is
    # encoded once (ResponseEncoder). RecommendResponse documents the answer.
    @bentoml.api(output_spec=RecommendResponse)
    async def recommend(
        self, user_id: Annotated[str, Field(min_length=1, max_length=200)],
        k: Annotated[int, Field(gt=0)] = 10, recent_item_ids: list[ItemId] = [],  # noqa: B006
        context: RequestContext = RequestContext(), filters: Filters = Filters(),  # noqa: B008
        exclude_item_ids: list[ItemId] = [],  # noqa: B006  (BentoML reads defaults as schema)
    ) -> Response:
        with _client_errors():
            check_limits(SETTINGS.max_k, SETTINGS.max_list_items, k, recent_item_ids=recent_item_ids,
                         exclude_item_ids=exclude_item_ids)
            result, fields = await self.runtime.recommender.respond(RecommendRequest(
                user_id, k, tuple(recent_item_ids), context.to_context(),
                tuple(filters.include_categories), tuple(filters.exclude_categories),
                tuple(exclude_item_ids)))
            body = self.responses.encode(result, fields, cached=fields["cache"] in ("l1", "l2"))
            return Response(body, media_type="application/json")

    @bentoml.api
    async def similar_items(self, item_id: ItemId, k: Annotated[int, Field(gt=0)] = 10) -> dict[str, Any]:
        with _client_errors():
            check_limits(SETTINGS.max_k, SETTINGS.max_list_items, k)
            return await self.runtime.endpoints.similar_items(item_id, k)

    @bentoml.api
    async def rank(self, user_id: Annotated[str, Field(min_length=1, max_length=200)],
                   item_ids: Annotated[list[ItemId], Field(min_length=1)],
                   context: RequestContext = RequestContext()) -> dict[str, Any]:  # noqa: B008
        with _client_errors():
            check_limits(SETTINGS.max_k, SETTINGS.max_list_items, item_ids=item_ids)
            return await self.runtime.endpoints.rank(user_id, tuple(item_ids), context.to_context())

    @bentoml.api
    async def events(self, user_id: Annotated[str, Field(min_length=1, max_length=200)],
                     item_id: ItemId, type: EventType = "view",
                     timestamp: float | None = None) -> dict[str, Any]:
        with _client_errors():
            try:
                return await self.runtime.endpoints.record_event(
                    user_id, item_id, type, timestamp if timestamp is not None else time.time())
            except CacheError as error:  # BentoML replaces the message of any 5xx it raises
                return JSONResponse(  # type: ignore[return-value]  # BentoML sends it as is
                    {"error": f"event store unavailable: {error}"}, status_code=503,
                    headers={"Retry-After": str(max(1, round(SETTINGS.breaker_reset_s)))})

    @bentoml.api
    async def info(self) -> dict[str, Any]:
        return self.runtime.info(SETTINGS)


class _client_errors:
    """Maps the project's exceptions to HTTP: bad input → 400/404, unavailable store → 503."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: object) -> bool:
        if isinstance(error, InvalidRequestError):
            raise (bentoml.exceptions.NotFound if error.status == 404 else
                   bentoml.exceptions.InvalidArgument)(str(error)) from error
        if isinstance(error, LimitError):
            raise bentoml.exceptions.InvalidArgument(str(error)) from error
        if isinstance(error, CacheError):
            raise bentoml.exceptions.ServiceUnavailable(f"event store unavailable: {error}") from error
        return False


Recommender = bentoml.service(
    name="recommender", traffic={"timeout": 10, "max_concurrency": 256}, workers=SETTINGS.workers,
)(_declare_models(RecommenderApi, ("embedding", "ranker", "fallback_ranker")))
