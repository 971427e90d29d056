"""SearchBody: the query must hold more than whitespace, filters in order, pages in bounds; the
conversion to the pipeline's SearchRequest."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from recsys.pipeline.search_request import SearchRequest
from serving.schemas import RequestLimits
from serving.search_schemas import SearchBody

LIMITS = RequestLimits(max_k=20, max_list_items=2)


def faults(raw: bytes) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        SearchBody.parse(raw, LIMITS)
    return {".".join(map(str, e["loc"])): e["type"] for e in caught.value.errors()}


def test_a_full_body_becomes_the_pipelines_request() -> None:
    body = SearchBody.parse(
        b'{"query": "horror 90s", "user_id": "u1", "recent_item_ids": ["a"], "page": 2,'
        b' "page_size": 5, "filters": {"categories": ["Comedy"], "year_from": 1990,'
        b' "year_to": 1995}}', LIMITS)
    assert body.to_request() == SearchRequest(
        query="horror 90s", user_id="u1", recent_items=("a",), categories=("Comedy",),
        year_from=1990, year_to=1995, page=2, page_size=5)


def test_defaults() -> None:
    assert SearchBody.parse(b'{"query": "heat"}', LIMITS).to_request() == SearchRequest("heat")


@pytest.mark.parametrize("raw, expected", [
    (b'{"query": ""}', {"query": "string_too_short"}),
    (b'{"query": "  \\t\\n "}', {"query": "blank"}),
    (b'{}', {"query": "missing"}),
    (b'{"query": 5}', {"query": "string_type"}),
    (b'{"query": "x", "page": 0}', {"page": "greater_than_equal"}),
    (b'{"query": "x", "page_size": 21}', {"page_size": "limit"}),
    (b'{"query": "x", "recent_item_ids": ["a", "b", "c"]}', {"recent_item_ids": "limit"}),
    (b'{"query": "x", "filters": {"year_from": 2000, "year_to": 1990}}',
     {"filters": "year_range"}),
    (b'{"query": "x", "filters": {"genres": ["Drama"]}}', {"filters.genres": "extra_forbidden"}),
    (b'{"query": "x", "user_id": ""}', {"user_id": "string_too_short"}),
])
def test_bad_bodies_name_the_field(raw: bytes, expected: dict[str, str]) -> None:
    assert faults(raw) == expected


def test_the_request_knows_its_year_range() -> None:
    assert SearchRequest("x").years is None
    assert SearchRequest("x", year_from=1990).years == (1990, 9999)
    assert SearchRequest("x", year_to=1990).years == (0, 1990)


def test_the_cache_fields_hold_the_normalised_query_and_sorted_categories() -> None:
    request = SearchRequest("Horror!", categories=("War", "Drama", "War"), page=3)
    fields = request.cache_fields("horror")
    assert fields["query"] == "horror" and fields["categories"] == ["Drama", "War"]
    assert fields["page"] == 3
