"""ResponseEncoder: the bytes JSONResponse would send, with each cached result encoded once."""
from __future__ import annotations

from typing import Any

import pytest
from starlette.responses import JSONResponse

from recsys.pipeline.recommend import Answer
from serving.responses import ResponseEncoder


def result(user: str = "u1", title: str = "Amélie (2001)") -> dict[str, Any]:
    return {"user_id": user, "items": [{"item_id": "i7", "title": title, "score": 0.25, "rank": 1,
                                        "sources": ["ann", "item2item"]}],
            "model_versions": {"embedding": "recsys-embedding:v1"}, "ranker": "ranker",
            "degraded": False, "degraded_reasons": []}


def fields(cache: str = "miss", latency_ms: float = 4.2) -> dict[str, Any]:
    return {"variant": "control", "cache": cache, "request_id": "ab" * 16,
            "latency_ms": latency_ms}


@pytest.mark.parametrize("title", ["Amélie (2001)", 'Say "Hi" \\ 東京', ""])
def test_the_body_is_what_jsonresponse_sends_for_the_merged_dict(title: str) -> None:
    stored = result(title=title)
    for level in ("miss", "l1"):
        own = fields(level)
        assert ResponseEncoder().encode(Answer(stored, own)) == JSONResponse({**stored, **own}).body


def test_a_cached_result_is_encoded_once_and_each_answer_gets_its_own_fields() -> None:
    encoder, stored = ResponseEncoder(), result()
    first = encoder.encode(Answer(stored, fields("miss", 4.2)))
    assert len(encoder._encoded) == 0  # a miss's result is not kept
    second = encoder.encode(Answer(stored, fields("l1", 0.07)))
    assert len(encoder._encoded) == 1
    third = encoder.encode(Answer(stored, fields("l2", 0.05)))
    assert len(encoder._encoded) == 1  # the same object: its JSON was reused
    assert first == JSONResponse({**stored, **fields("miss", 4.2)}).body
    assert second == JSONResponse({**stored, **fields("l1", 0.07)}).body
    assert third == JSONResponse({**stored, **fields("l2", 0.05)}).body


def test_an_equal_result_that_is_another_object_is_encoded_for_itself() -> None:
    encoder = ResponseEncoder(kept=1)
    one, two = result("u1"), result("u2")
    for stored in (one, two, one):  # two evicts one, then one is encoded again
        assert encoder.encode(Answer(stored, fields("l1"))) == \
            JSONResponse({**stored, **fields("l1")}).body
    assert list(encoder._encoded.values()) == [(one, JSONResponse(one).body)]


def test_empty_parts_and_bad_sizes() -> None:
    assert ResponseEncoder().encode(Answer({}, fields("l1"))) == JSONResponse(fields("l1")).body
    with pytest.raises(ValueError, match="kept must be >= 1, got 0"):
        ResponseEncoder(kept=0)
    with pytest.raises(ValueError):  # NaN is refused, as JSONResponse refuses it
        ResponseEncoder().encode(Answer({**result(), "latency": float("nan")}, fields("l1")))
