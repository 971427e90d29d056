"""The one mapping of errors to HTTP: status and code per error, the ErrorBody, Retry-After."""
from __future__ import annotations

import asyncio
import json

import pytest
from starlette.responses import Response

from recsys.errors import (
    ArtifactError,
    NotFoundError,
    RankingError,
    RecsysError,
    StoreError,
    UnknownIdError,
)
from serving.errors import answers_errors, code_for, status_for
from serving.schemas import ErrorBody


@pytest.mark.parametrize("error, status", [
    (UnknownIdError("exclude_item_ids", "unknown item id(s) 'x'"), 400),
    (NotFoundError("item_id", "unknown item id 'x'"), 404),
    (StoreError("event store write failed: ConnectionError", retry_after_s=2.0), 503),
    (RankingError("a stage error never reaches a client"), None),
    (ArtifactError("a bundle is broken: a bug or a bad deployment"), None),
])
def test_each_error_has_one_status(error: RecsysError, status: int | None) -> None:
    assert status_for(error) == status


@pytest.mark.parametrize("status, code", [
    (400, "invalid_request"), (404, "not_found"), (405, "method_not_allowed"),
    (413, "body_too_large"), (429, "too_many_requests"), (500, "internal_error"),
    (503, "unavailable"), (504, "timeout"), (418, "i'm_a_teapot"), (599, "server_error"),
])
def test_codes_by_status(status: int, code: str) -> None:
    assert code_for(status) == code


def answer(error: Exception) -> Response:
    @answers_errors
    async def api() -> Response:
        raise error
    return asyncio.run(api())


def test_a_client_error_answers_the_error_body_with_the_field() -> None:
    response = answer(UnknownIdError("recent_item_ids", "unknown item id(s) 'x'"))

    assert response.status_code == 400
    body = ErrorBody.model_validate_json(bytes(response.body))
    assert body.code == "invalid_request"
    assert body.error == "recent_item_ids: unknown item id(s) 'x'"
    assert [(f.field, f.message) for f in body.fields] == [
        ("recent_item_ids", "unknown item id(s) 'x'")]


def test_an_unavailable_store_answers_503_with_retry_after() -> None:
    response = answer(StoreError("event store write failed: ConnectionError", retry_after_s=9.6))

    assert response.status_code == 503 and response.headers["retry-after"] == "10"
    assert json.loads(bytes(response.body))["code"] == "unavailable"


def test_anything_else_reaches_bentoml_as_a_bug() -> None:
    with pytest.raises(RankingError):
        answer(RankingError("escaped the pipeline"))
    with pytest.raises(KeyError):
        answer(KeyError("a plain bug"))


def test_the_decorated_method_keeps_its_name_and_signature() -> None:
    async def recommend(self: object, body: int) -> int:
        return body

    wrapped = answers_errors(recommend)
    assert wrapped.__name__ == "recommend" and wrapped.__wrapped__ is recommend  # type: ignore[attr-defined]
    assert asyncio.run(wrapped(None, 3)) == 3
