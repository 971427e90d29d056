"""The HTTP contract of POST /search: its body (validated by the HTTP edge, as every body in
serving/schemas.py) and its answer."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from recsys.pipeline.search_request import SearchRequest
from serving.schemas import Category, ItemIds, K, RequestBody, Strict, UserId


def not_blank(query: str) -> str:
    if not query.strip():
        raise PydanticCustomError("blank", "must hold more than whitespace")
    return query


Query = Annotated[str, Field(min_length=1, max_length=500, description="what to look for: "
                             "title words (typos tolerated), category words ('horror', "
                             "'sci fi'), decades ('90s')"), AfterValidator(not_blank)]
Year = Annotated[int, Field(ge=0, le=9999)]


class SearchFilters(Strict):
    categories: list[Category] = Field(default_factory=list, description="an item must have "
                                       "one of them")
    year_from: Year | None = Field(default=None, description="inclusive; items without a year "
                                   "never pass a year filter")
    year_to: Year | None = None

    @model_validator(mode="after")
    def _in_order(self) -> SearchFilters:
        if self.year_from is not None and self.year_to is not None \
                and self.year_from > self.year_to:
            raise PydanticCustomError("year_range", "year_from {year_from} is after year_to "
                                      "{year_to}", {"year_from": self.year_from,
                                                    "year_to": self.year_to})
        return self


class SearchBody(RequestBody):
    query: Query
    user_id: UserId | None = Field(None, description="personalise by this user's taste")
    recent_item_ids: ItemIds = Field(default_factory=list, description="personalise by these "
                                     "items too (or alone, without a user_id)")
    filters: SearchFilters = Field(default_factory=SearchFilters)
    page: Annotated[int, Field(ge=1, le=1000, description="from 1")] = 1
    page_size: K = 10

    def to_request(self) -> SearchRequest:
        return SearchRequest(
            query=self.query, user_id=self.user_id, recent_items=tuple(self.recent_item_ids),
            categories=tuple(self.filters.categories), year_from=self.filters.year_from,
            year_to=self.filters.year_to, page=self.page, page_size=self.page_size)


class SearchedItem(Strict):
    item_id: str
    title: str
    score: float = Field(description="the fused score: over the retrievers that found the item, "
                         "the sum of weight / (k + its rank there)")
    rank: int = Field(ge=1, description="position in the whole result, from 1")
    retrievers: list[Literal["bm25", "vector", "personal"]] = Field(
        description="bm25: the words; vector: the item space; personal: the user's taste")


class Understood(Strict):
    words: list[str] = Field(description="the words searched for: normalised, typos corrected")
    corrections: dict[str, str] = Field(description="word typed -> word read")
    categories: list[str] = Field(description="categories the query named, applied as filters")
    year_from: int | None = Field(description="a decade the query named, applied as a filter")
    year_to: int | None


class SearchResponse(Strict):
    """What POST /search answers (encoded by the service itself, as /recommend's answer)."""

    query: str
    items: list[SearchedItem] = Field(description="the page asked for; empty when nothing "
                                      "matched or the page is past the end")
    total: int = Field(ge=0, description="results over all pages")
    page: int = Field(ge=1)
    page_size: int = Field(ge=1)
    understood: Understood
    personalised: bool = Field(description="whether the user's taste ordered the results too")
    ranking: Literal["learned", "fusion"] = Field(
        "fusion", description="learned: the search ranker ordered the first 50 fused results; "
        "fusion: reciprocal rank fusion alone (training chose it, or the ranker failed)")
    model_versions: dict[str, str]
    degraded: bool = Field(description="true when a retriever or the personalisation failed or "
                           "ran out of time: the page was fused without it")
    degraded_reasons: list[str]
    cache: Literal["none", "l1", "l2", "miss"]
    request_id: str
    latency_ms: float = Field(description="server-side time in the search pipeline")
