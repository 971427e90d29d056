"""HTTP request and response models (the only pydantic models in the runtime package) and
the request limits."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from recsys.features import DEVICES, Context
from recsys.history import EVENT_TYPES

ItemId = Annotated[str, Field(min_length=1, max_length=200)]


class RequestContext(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: Literal[DEVICES] = "unknown"  # type: ignore[valid-type]
    hour: Annotated[int, Field(ge=0, le=23)] | None = None

    def to_context(self) -> Context:
        return Context(hour=self.hour, device=self.device)


class Filters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_categories: list[Annotated[str, Field(min_length=1)]] = []
    exclude_categories: list[Annotated[str, Field(min_length=1)]] = []


EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]


class RecommendedItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: str
    title: str
    score: float = Field(description="the ranker's score (the fallback ranker's when degraded)")
    rank: int = Field(ge=1)
    sources: list[str] = Field(description="retrieval sources that proposed the item")


class RecommendResponse(BaseModel):
    """What POST /recommend answers. The service encodes the pipeline's dict itself (see
    service.py); this model documents it in the OpenAPI schema and the tests hold every
    response to it."""

    model_config = ConfigDict(extra="forbid")

    user_id: str
    items: list[RecommendedItem]
    model_versions: dict[str, str] = Field(description="model kind -> BentoML tag that served")
    ranker: Literal["ranker", "fallback", "retrieval"] = Field(
        description="what ordered the items: the ranker, the fallback ranker or retrieval")
    degraded: bool
    degraded_reasons: list[str]
    variant: str = Field(description="experiment variant the user is routed to")
    cache: Literal["none", "l1", "l2", "miss"]
    request_id: str
    latency_ms: float = Field(description="server-side time in the pipeline")


class LimitError(ValueError):
    """A request exceeds a configured limit; the message names the field."""


def check_limits(max_k: int, max_items: int, k: int | None = None,
                 **lists: list[str] | None) -> None:
    if k is not None and k > max_k:
        raise LimitError(f"k: must be at most {max_k} (RECSYS_MAX_K), got {k}")
    for name, values in lists.items():
        if values is not None and len(values) > max_items:
            raise LimitError(f"{name}: at most {max_items} items (RECSYS_MAX_LIST_ITEMS), "
                             f"got {len(values)}")
