"""The HTTP contract: request bodies, responses and the one error body, documented in the OpenAPI
schema. Request bodies are validated once, by the HTTP edge (serving/edge.py): strict JSON types,
unknown fields refused, and the limits that settings decide (RequestLimits) as the validation
context."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import bentoml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo
from pydantic_core import PydanticCustomError

from recsys.context import DEVICES, Context
from recsys.pipeline.request import RecommendRequest
from recsys.settings import ServingSettings
from recsys.stores.history import EVENT_TYPES

if TYPE_CHECKING:
    from starlette.requests import Request
    from typing_extensions import Self

VALIDATED_BODY = "recsys.validated_body"  # the request scope key the edge puts the body under



@dataclass(frozen=True)
class RequestLimits:
    """What a request may ask for; the edge passes it to every body's validation."""

    max_k: int
    max_list_items: int

    @classmethod
    def from_settings(cls, settings: ServingSettings) -> RequestLimits:
        return cls(max_k=settings.max_k, max_list_items=settings.max_list_items)


def limits_of(info: ValidationInfo) -> RequestLimits:
    if not isinstance(info.context, RequestLimits):
        raise TypeError("request bodies are validated by RequestBody.parse, with the limits")
    return info.context


def at_most_k(k: int, info: ValidationInfo) -> int:
    limit = limits_of(info).max_k
    if k > limit:
        raise PydanticCustomError("limit", "must be at most {limit} (RECSYS_MAX_K), got {k}",
                                  {"limit": limit, "k": k})
    return k


def at_most_items(ids: list[str], info: ValidationInfo) -> list[str]:
    limit = limits_of(info).max_list_items
    if len(ids) > limit:
        raise PydanticCustomError(
            "limit", "at most {limit} items (RECSYS_MAX_LIST_ITEMS), got {count}",
            {"limit": limit, "count": len(ids)})
    return ids


UserId = Annotated[str, Field(min_length=1, max_length=200)]
ItemId = Annotated[str, Field(min_length=1, max_length=200)]
EventId = Annotated[str, Field(
    pattern=r"^[A-Za-z0-9._-]{1,128}$",
    description="the client's id of this event (e.g. a UUID): a retry with the same id within "
                "RECSYS_EVENT_ID_TTL_S (1 day) is answered without recording the event again")]
K = Annotated[int, Field(gt=0, description="items to return, at most RECSYS_MAX_K (100)"),
              AfterValidator(at_most_k)]
ItemIds = Annotated[list[ItemId], Field(description="at most RECSYS_MAX_LIST_ITEMS (1000) ids"),
                    AfterValidator(at_most_items)]
Category = Annotated[str, Field(min_length=1, max_length=200)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RequestContext(Strict):
    device: Literal[DEVICES] = "unknown"  # type: ignore[valid-type]
    hour: Annotated[int, Field(ge=0, le=23)] | None = None

    def to_context(self) -> Context:
        return Context(hour=self.hour, device=self.device)


class Filters(Strict):
    include_categories: list[Category] = []
    exclude_categories: list[Category] = []


class RequestBody(bentoml.IODescriptor):
    """A JSON request body. BentoML hands the validated model itself to the API method
    (`__root_input__`), taking it from the request scope where the edge put it."""

    model_config = ConfigDict(extra="forbid", strict=True)
    __root_input__: ClassVar[bool] = True

    @classmethod
    def parse(cls, raw: bytes, limits: RequestLimits) -> Self:
        """The body of `raw` JSON (empty: no fields); pydantic's ValidationError names every
        field at fault."""
        return cls.model_validate_json(raw or b"{}", context=limits)

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> Self:
        body = request.scope.get(VALIDATED_BODY)
        if not isinstance(body, cls):
            raise TypeError(f"{request.url.path}: the body was not validated by the HTTP edge "
                            "(serving.edge.install_edge on the service)")
        return body


class RecommendBody(RequestBody):
    user_id: UserId
    k: K = 10
    recent_item_ids: ItemIds = Field(default_factory=list)
    context: RequestContext = Field(default_factory=RequestContext)
    filters: Filters = Field(default_factory=Filters)
    exclude_item_ids: ItemIds = Field(default_factory=list)
    explain: bool = Field(False, description="each item says why it is there: the path that "
                          "ordered it, the sources that found it, its similarity to the user and "
                          "the ranker's main feature contributions (one more ranker call)")


    def to_request(self) -> RecommendRequest:
        return RecommendRequest(
            user_id=self.user_id, k=self.k, recent_items=tuple(self.recent_item_ids),
            context=self.context.to_context(),
            include_categories=tuple(self.filters.include_categories),
            exclude_categories=tuple(self.filters.exclude_categories),
            exclude_items=tuple(self.exclude_item_ids), explain=self.explain)


class SimilarItemsBody(RequestBody):
    item_id: ItemId
    k: K = 10



class RankBody(RequestBody):
    user_id: UserId
    item_ids: Annotated[ItemIds, Field(min_length=1)]
    context: RequestContext = Field(default_factory=RequestContext)



class EventBody(RequestBody):
    user_id: UserId
    item_id: ItemId
    type: Literal[EVENT_TYPES] = "view"  # type: ignore[valid-type]
    timestamp: float | None = Field(None, description="unix seconds (default: when received)")
    event_id: EventId | None = None


class InfoBody(RequestBody):
    """No fields: an empty body or {}."""


class GuardsBody(Strict):
    """A canary's guards; a field left out keeps its default (recsys/experiments/canary.py)."""

    model_config = ConfigDict(extra="forbid", strict=False)  # 1 for 1.0 in JSON numbers
    max_error_increase: Annotated[float, Field(ge=0, le=1)] = 0.001
    max_degraded_increase: Annotated[float, Field(ge=0, le=1)] = 0.01
    max_p99_increase_ms: Annotated[float, Field(ge=0)] = 5.0
    max_ctr_drop: Annotated[float, Field(ge=0, le=1)] = 0.01
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.05
    min_requests: Annotated[int, Field(ge=1)] = 500
    min_impressions: Annotated[int, Field(ge=1)] = 500
    min_stage_seconds: Annotated[float, Field(ge=0)] = 60.0
    warmup_seconds: Annotated[float, Field(ge=0, description="latency is timed after a "
                              "stage's first seconds")] = 10.0


class AdminCanaryBody(RequestBody):
    """POST /admin/canary (needs "Authorization: Bearer $RECSYS_ADMIN_TOKEN")."""

    model_config = ConfigDict(extra="forbid", strict=False)
    action: Literal["start", "status", "pause", "resume", "abort", "promote"]
    stages: Annotated[list[Annotated[float, Field(gt=0, le=1)]], Field(
        min_length=1, max_length=20, description="start: shares of users, increasing, the last "
        "normally 1 (default 0.01, 0.05, 0.2, 0.5, 1)")] | None = None
    guards: GuardsBody = Field(default_factory=GuardsBody)
    verdicts: Annotated[int, Field(ge=0, le=5000, description="status: the last judgements "
                                   "to return")] = 0


class AdminRollbackBody(RequestBody):
    """POST /admin/rollback: the previous champion back on live traffic (no fields)."""


class Contribution(Strict):
    feature: str = Field(description="a ranker feature, or a group: user_item_interaction, "
                         "item_embedding")
    effect: float = Field(description="the item's score minus its score with the feature at its "
                          "training mean: positive pushed the item up")


class Explanation(Strict):
    path: str = Field(description="what ordered the list (as `ranker` of the response)")
    sources: list[str]
    similarity: float = Field(description="the item's retrieval similarity to the user")
    contributions: list[Contribution] = Field(description="the ranker's largest feature "
                                              "effects on this item; empty when no ranker "
                                              "ordered the list")


class RecommendedItem(Strict):
    item_id: str
    title: str
    score: float = Field(description="the ranker's score (the fallback ranker's when degraded)")
    rank: int = Field(ge=1)
    sources: list[str] = Field(description="retrieval sources that proposed the item")
    explanation: Explanation | None = Field(None, description="with `explain: true` only")


class RecommendResponse(Strict):
    """What POST /recommend answers. The service encodes the pipeline's result itself
    (serving/responses.py); this model documents it and the tests hold every answer to it."""

    user_id: str
    items: list[RecommendedItem]
    model_versions: dict[str, str] = Field(description="model kind -> BentoML tag that served")
    ranker: Literal["ranker", "fallback", "retrieval", "item_to_item", "popularity"] = Field(
        description="what ordered the items: the ranker, the fallback ranker, retrieval (the "
                    "ranker failed, or lost to retrieval order on validation), item-to-item (a "
                    "history as short as validation found it better for) or popularity (a user "
                    "without history); GET /info shows each model set's ranking policy")
    degraded: bool
    degraded_reasons: list[str]
    variant: str = Field(description="experiment variant the user is routed to")
    cache: Literal["none", "l1", "l2", "precomputed", "miss"] = Field(
        description="what answered: the in-process cache (l1), Redis (l2), the batch job's "
                    "precomputed list (RECSYS_PRECOMPUTED_TIER), or the models (miss; none: "
                    "no cache)")
    request_id: str
    latency_ms: float = Field(description="server-side time in the pipeline")


class SimilarItem(Strict):
    item_id: str
    title: str
    score: float = Field(description="inner product of the two item vectors")
    rank: int = Field(ge=1)


class SimilarItemsResponse(Strict):
    item_id: str
    items: list[SimilarItem]
    model_versions: dict[str, str]


class ItemScore(Strict):
    item_id: str
    score: float


class RankResponse(Strict):
    user_id: str
    variant: str
    model_versions: dict[str, str]
    scores: list[ItemScore] = Field(description="one per item id sent, in the order sent")
    ranker: Literal["ranker", "fallback", "retrieval"]
    degraded: bool
    degraded_reasons: list[str]


class EventResponse(Strict):
    user_id: str
    events_kept: int = Field(description="events now kept for the user (the newest)")
    cache_invalidated: bool = Field(
        description="false: the user's cached results elsewhere expire instead (Redis failed)")
    duplicate: bool = Field(False, description="true: an event with this event_id was already "
                            "recorded for the user; nothing was recorded now")


class FieldError(Strict):
    field: str = Field(description='the request field at fault, dotted ("context.hour")')
    message: str


class ErrorBody(Strict):
    """Every error answer, 4xx and 5xx alike."""

    error: str = Field(description="what went wrong, for a person")
    code: str = Field(description="what went wrong, for a program: invalid_request, "
                      "unauthorized, not_found, method_not_allowed, body_too_large, "
                      "too_many_requests, internal_error, unavailable, timeout, ...")
    fields: list[FieldError] = Field(default=[], description="the request fields at fault")
