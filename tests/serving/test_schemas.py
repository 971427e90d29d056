"""Request bodies: strict JSON, unknown fields refused, the limits settings decide, and the
conversion to what the pipeline takes."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from recsys.context import Context
from recsys.pipeline.request import RecommendRequest
from recsys.settings import ServingSettings
from serving.schemas import EventBody, RankBody, RecommendBody, RequestLimits, SimilarItemsBody

LIMITS = RequestLimits(max_k=20, max_list_items=2)


def fields_at_fault(body: type, raw: bytes) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        body.parse(raw, LIMITS)
    return {".".join(map(str, e["loc"])): e["type"] for e in caught.value.errors()}


def test_a_full_body_becomes_the_pipelines_request() -> None:
    body = RecommendBody.parse(
        b'{"user_id": "u1", "k": 5, "recent_item_ids": ["a", "b"], "exclude_item_ids": ["c"],'
        b' "context": {"device": "tv", "hour": 23},'
        b' "filters": {"include_categories": ["Drama"], "exclude_categories": ["Horror"]}}',
        LIMITS)

    assert body.to_request() == RecommendRequest(
        user_id="u1", k=5, recent_items=("a", "b"), context=Context(hour=23, device="tv"),
        include_categories=("Drama",), exclude_categories=("Horror",), exclude_items=("c",))


def test_defaults() -> None:
    assert RecommendBody.parse(b'{"user_id": "u1"}', LIMITS).to_request() == \
        RecommendRequest("u1", 10)


@pytest.mark.parametrize("raw, faults", [
    (b'{"user_id": "u", "k": "5"}', {"k": "int_type"}),
    (b'{"user_id": "u", "k": true}', {"k": "int_type"}),
    (b'{"user_id": "u", "k": 5.0}', {"k": "int_type"}),
    (b'{"user_id": 7}', {"user_id": "string_type"}),
    (b'{"user_id": "u", "k": 21}', {"k": "limit"}),
    (b'{"user_id": "u", "recent_item_ids": ["a", "b", "c"]}', {"recent_item_ids": "limit"}),
    (b'{"user_id": "u", "context": {"hour": "3"}}', {"context.hour": "int_type"}),
    (b'{"user_id": "u", "context": {"tz": "UTC"}}', {"context.tz": "extra_forbidden"}),
    (b'{"user_id": "u", "debug": true}', {"debug": "extra_forbidden"}),
])
def test_strict_types_unknown_fields_and_limits(raw: bytes, faults: dict[str, str]) -> None:
    assert fields_at_fault(RecommendBody, raw) == faults


def test_other_bodies_hold_their_limits_too() -> None:
    assert fields_at_fault(SimilarItemsBody, b'{"item_id": "i", "k": 21}') == {"k": "limit"}
    assert fields_at_fault(RankBody, b'{"user_id": "u", "item_ids": ["a", "b", "c"]}') == \
        {"item_ids": "limit"}
    assert fields_at_fault(RankBody, b'{"user_id": "u", "item_ids": []}') == \
        {"item_ids": "too_short"}
    assert EventBody.parse(b'{"user_id": "u", "item_id": "i", "timestamp": 7}', LIMITS) \
        .timestamp == 7.0  # an integer is a number of seconds


def test_limits_come_from_the_settings() -> None:
    assert RequestLimits.from_settings(ServingSettings(max_k=7, max_list_items=3)) == \
        RequestLimits(max_k=7, max_list_items=3)


def test_validating_without_the_limits_is_a_wiring_bug() -> None:
    with pytest.raises(TypeError, match="RequestBody.parse"):
        RecommendBody.model_validate_json(b'{"user_id": "u", "k": 3}')
