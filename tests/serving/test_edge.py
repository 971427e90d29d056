"""serving/edge.py over a small Starlette app: one validation, the limits, the one error body.

The served service runs the same edge (tests/e2e/test_service_api.py checks it through `bentoml
serve`); here each behaviour is made to happen on its own."""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from serving.edge import HttpEdge
from serving.openapi import with_error_bodies
from serving.schemas import VALIDATED_BODY, ErrorBody, RecommendBody, RequestLimits

LIMITS = RequestLimits(max_k=10, max_list_items=3)


async def recommend(request: Request) -> Response:
    body = request.scope[VALIDATED_BODY]
    assert isinstance(body, RecommendBody)
    if body.user_id == "slow":
        await asyncio.sleep(0.5)
    return JSONResponse({"user_id": body.user_id, "k": body.k})


async def broken(request: Request) -> Response:
    return PlainTextResponse("it broke", status_code=500)


async def listed(request: Request) -> Response:  # the shape BentoML gives its own 4xx
    return JSONResponse([{"error": "bad thing"}], status_code=400)


async def spec(request: Request) -> Response:
    return JSONResponse({"paths": {"/recommend": {"post": {"responses": {
        "200": {"description": "ok"}, "400": {"description": "BentoML's"}}}}}})


async def livez(request: Request) -> Response:
    return PlainTextResponse("ok")


async def admin(request: Request) -> Response:
    return JSONResponse({"done": True})


APP = Starlette(routes=[Route("/recommend", recommend, methods=["POST"]),
                       Route("/broken", broken, methods=["POST"]),
                       Route("/listed", listed, methods=["POST"]),
                       Route("/admin/canary", admin, methods=["POST"]),
                       Route("/events", admin, methods=["POST"]),
                       Route("/docs.json", spec), Route("/livez", livez)])


def client(**options: Any) -> httpx.AsyncClient:
    settings: dict[str, Any] = {"bodies": {"/recommend": RecommendBody}, "limits": LIMITS,
                                "max_body_bytes": 1000, "max_concurrency": 4, "timeout_s": 5.0}
    edge = HttpEdge(APP, **(settings | options))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=edge), base_url="http://edge")


def call(method: str, path: str, **options: Any) -> httpx.Response:
    async def send() -> httpx.Response:
        async with client() as http:
            return await http.request(method, path, **options)
    return asyncio.run(send())


def error_of(response: httpx.Response) -> ErrorBody:
    assert response.headers["content-type"] == "application/json"
    return ErrorBody.model_validate_json(response.content)


def test_a_valid_body_reaches_the_api_validated() -> None:
    response = call("POST", "/recommend", json={"user_id": "u", "k": 3})

    assert response.status_code == 200 and response.json() == {"user_id": "u", "k": 3}


def test_every_field_at_fault_is_named() -> None:
    response = call("POST", "/recommend", json={"user_id": "", "k": 11, "context": {"hour": "1"},
                                                "recent_item_ids": ["a", "b", "c", "d"]})

    assert response.status_code == 400
    body = error_of(response)
    assert body.code == "invalid_request"
    fields = {f.field: f.message for f in body.fields}
    assert set(fields) == {"user_id", "k", "context.hour", "recent_item_ids"}
    assert fields["k"] == "must be at most 10 (RECSYS_MAX_K), got 11"
    assert fields["recent_item_ids"] == "at most 3 items (RECSYS_MAX_LIST_ITEMS), got 4"
    assert body.error.startswith("user_id: ")


def test_a_declared_body_over_the_limit_is_413() -> None:
    response = call("POST", "/recommend", content=b"{" + b" " * 2000 + b"}",
                    headers={"content-type": "application/json"})

    assert response.status_code == 413
    assert error_of(response).code == "body_too_large"


def test_a_pickled_body_is_refused() -> None:
    response = call("POST", "/recommend", content=b"\x80\x04.",
                    headers={"content-type": "application/vnd.bentoml+pickle"})

    assert response.status_code == 415 and error_of(response).code == "unsupported_media_type"


@pytest.mark.parametrize("path, status, code, message", [
    ("/broken", 500, "internal_error", "it broke"),
    ("/listed", 400, "invalid_request", "bad thing"),
    ("/nowhere", 404, "not_found", "Not Found"),
])
def test_other_error_answers_are_reshaped(path: str, status: int, code: str,
                                          message: str) -> None:
    response = call("POST", path, json={})

    assert response.status_code == status
    assert error_of(response) == ErrorBody(error=message, code=code)


def test_error_answers_are_logged_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="bentoml.recsys.http"):
        call("POST", "/recommend", json={"user_id": "u", "k": 0})
        call("POST", "/broken", json={})

    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "POST /recommend -> 400 invalid_request: k: Input should be greater than 0"),
        ("WARNING", "POST /broken -> 500 internal_error: it broke")]
    assert not any(r.exc_info for r in caplog.records)


def test_requests_beyond_the_concurrency_limit_are_429_and_probes_pass() -> None:
    async def scenario() -> tuple[list[int], int]:
        async with client(max_concurrency=2) as http:
            slow = [asyncio.create_task(http.post("/recommend", json={"user_id": "slow"}))
                    for _ in range(2)]
            await asyncio.sleep(0.1)
            refused = await http.post("/recommend", json={"user_id": "u"})
            probe = await http.get("/livez")
            statuses = [(await task).status_code for task in slow] + [refused.status_code]
            assert error_of(refused).code == "too_many_requests"
            return statuses, probe.status_code

    statuses, probe = asyncio.run(scenario())
    assert statuses == [200, 200, 429] and probe == 200


def test_a_request_past_the_timeout_is_504() -> None:
    async def scenario() -> httpx.Response:
        async with client(timeout_s=0.1) as http:
            return await http.post("/recommend", json={"user_id": "slow"})

    response = asyncio.run(scenario())
    assert response.status_code == 504 and error_of(response).code == "timeout"


def test_the_openapi_schema_documents_the_error_body() -> None:
    spec = call("GET", "/docs.json").json()

    responses = spec["paths"]["/recommend"]["post"]["responses"]
    assert responses["200"] == {"description": "ok"}
    assert {"400", "404", "413", "429", "500", "503", "504"} <= set(responses)
    for status in ("400", "413", "504"):
        assert responses[status]["content"]["application/json"]["schema"] == \
            {"$ref": "#/components/schemas/ErrorBody"}
    schemas = spec["components"]["schemas"]
    assert schemas["ErrorBody"]["properties"]["fields"]["items"] == \
        {"$ref": "#/components/schemas/FieldError"}
    assert "FieldError" in schemas


def test_the_schema_patch_leaves_other_routes_alone() -> None:
    spec = {"paths": {"/metrics": {"get": {"responses": {"200": {}}}}}}

    patched = with_error_bodies(spec, {"/recommend": RecommendBody})
    assert patched["paths"] == spec["paths"]
    assert json.dumps(spec) == json.dumps({"paths": {"/metrics": {"get": {"responses":
                                                                         {"200": {}}}}}})


def admin_call(token: str | None, **headers: str) -> httpx.Response:
    async def send() -> httpx.Response:
        async with client(admin_token=token) as http:
            return await http.post("/admin/canary", json={}, headers=headers)
    return asyncio.run(send())


def test_admin_endpoints_are_disabled_without_a_token() -> None:
    response = admin_call(None, authorization="Bearer anything")

    assert response.status_code == 404
    assert "set RECSYS_ADMIN_TOKEN" in error_of(response).error


@pytest.mark.parametrize("sent", ["", "s3cret", "Bearer s3cre", "Bearer s3cret ", "bearer s3cret",
                                  "Bearer S3CRET"])
def test_admin_endpoints_refuse_any_other_credentials(sent: str) -> None:
    response = admin_call("s3cret", **({"authorization": sent} if sent else {}))

    assert response.status_code == 401 and error_of(response).code == "unauthorized"
    assert response.headers["www-authenticate"] == 'Bearer realm="recsys admin"'


def test_admin_endpoints_answer_the_token() -> None:
    response = admin_call("s3cret", authorization="Bearer s3cret")

    assert response.status_code == 200 and response.json() == {"done": True}


def test_events_over_a_clients_rate_are_429_with_retry_after_and_other_clients_go_on() -> None:
    async def send() -> list[httpx.Response]:
        async with client(events_rate_limit="3/minute",
                          client_address_header="X-Forwarded-For") as http:
            mine = {"x-forwarded-for": "10.0.0.1, 10.0.0.254"}
            answers = [await http.post("/events", json={}, headers=mine) for _ in range(4)]
            answers.append(await http.post("/events", json={},
                                           headers={"x-forwarded-for": "10.0.0.2"}))
            answers.append(await http.post("/recommend", json={"user_id": "u"}, headers=mine))
            return answers

    *allowed, over, other, recommend = asyncio.run(send())
    assert [r.status_code for r in allowed] == [200, 200, 200]
    assert over.status_code == 429 and error_of(over).code == "too_many_requests"
    assert "RECSYS_EVENTS_RATE_LIMIT" in error_of(over).error
    assert 1 <= int(over.headers["retry-after"]) <= 60
    assert other.status_code == 200 and recommend.status_code == 200


def test_without_a_header_setting_the_peer_address_is_the_client() -> None:
    async def send() -> list[int]:
        async with client(events_rate_limit="1/minute") as http:
            return [(await http.post("/events", json={},
                                     headers={"x-forwarded-for": f"10.0.0.{n}"})).status_code
                    for n in range(2)]  # a header nobody trusted: both from the same peer

    assert asyncio.run(send()) == [200, 429]
