"""End to end: `bentoml serve service:Recommender` (default settings, real Redis) over HTTP.

Only the stage timeouts are widened (RELAXED_LATENCY) so that the happy-path assertions
("not degraded", "ranked by the primary ranker") do not depend on the machine's load.

Every endpoint, the response contract, client errors (always 4xx in the one error body with the
field named, never a 5xx, logged in one line), cold start, the result cache and its invalidation
by /events, and /metrics.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.processes import ServerProcess
from serving.schemas import RecommendResponse
from tests.support.fixtures_models import TrainedModels
from tests.support.http import (
    error_body,
    error_fields,
    error_text,
    idle_connection_still_answers,
    metric_delta,
    metric_samples,
    wait_for,
)
from tests.support.served import served_with_redis

pytestmark = pytest.mark.slow

MAX_K = 100  # RECSYS_MAX_K default
MAX_LIST_ITEMS = 1000  # RECSYS_MAX_LIST_ITEMS default
MAX_BODY_BYTES = 1_048_576  # RECSYS_MAX_BODY_BYTES default


@pytest.fixture(scope="module")
def server(trained_models: TrainedModels, redis_server: Any,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with served_with_redis(trained_models, redis_server,
                           tmp_path_factory.mktemp("serve-api")) as process:
        yield process


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def champion_tags(trained_models: TrainedModels) -> dict[str, str]:
    return json.loads(trained_models.models_file.read_text())["champion"]


@pytest.fixture(scope="module")
def item_ids(http: httpx.Client) -> list[str]:
    """Real catalogue ids, taken from a recommendation."""
    response = http.post("/recommend", json={"user_id": _user("catalogue"), "k": 20})
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


def _user(tag: str) -> str:
    return f"api-{tag}-{uuid.uuid4().hex[:8]}"


def _recommend(http: httpx.Client, **body: Any) -> dict[str, Any]:
    response = http.post("/recommend", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    RecommendResponse.model_validate(response.json())  # every answer, to the documented contract
    return response.json()


def _assert_client_error(response: httpx.Response, field: str, status: int = 400) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert field in error_fields(response), (field, response.text)


# ---- health and info ----------------------------------------------------------------------

@pytest.mark.parametrize("probe", ["/livez", "/readyz"])
def test_probes_answer_200(http: httpx.Client, probe: str) -> None:
    assert http.get(probe).status_code == 200


def test_an_idle_keep_alive_connection_outlives_the_clients_idle_timeout(
        server: ServerProcess) -> None:
    """The server holds an idle connection longer than httpx's and HAProxy's 5 s, so a client
    never sends a request on a connection the server is closing (uvicorn's default is 5 s)."""
    assert idle_connection_still_answers("127.0.0.1", server.port)


def test_info_lists_models_limits_and_topology(http: httpx.Client,
                                               champion_tags: dict[str, str]) -> None:
    response = http.post("/info", json={})

    assert response.status_code == 200, response.text
    info = response.json()
    assert info["models"] == {"champion": champion_tags}
    assert info["catalogue_items"]["champion"] > 0
    assert info["experiment"]["variants"] == [{"name": "control", "alias": "champion",
                                               "weight": 1.0}]
    assert info["topology"] == "inline" and info["redis"] is True
    assert info["limits"] == {"max_k": MAX_K, "max_list_items": MAX_LIST_ITEMS,
                              "max_body_bytes": MAX_BODY_BYTES}
    assert info["history_len"]["champion"] > 0


# ---- the response contract ----------------------------------------------------------------

def test_recommend_response_fields(http: httpx.Client, champion_tags: dict[str, str],
                                   item_ids: list[str]) -> None:
    user = _user("fields")  # one recent item: the models answer
    body = _recommend(http, user_id=user, k=7, context={"device": "mobile", "hour": 21},
                      recent_item_ids=item_ids[:1])

    assert body["user_id"] == user
    assert len(body["items"]) == 7
    assert [item["rank"] for item in body["items"]] == list(range(1, 8))
    scores = [item["score"] for item in body["items"]]
    assert all(isinstance(s, float) for s in scores)
    assert len({item["item_id"] for item in body["items"]}) == 7
    for item in body["items"]:
        assert item["sources"] and set(item["sources"]) <= {"ann", "popular", "item2item"}
        assert item["title"]
    assert body["model_versions"] == champion_tags
    assert body["variant"] == "control"
    assert body["ranker"] == "ranker"
    assert body["degraded"] is False and body["degraded_reasons"] == []
    assert body["cache"] == "miss"
    assert isinstance(body["latency_ms"], float) and 0 < body["latency_ms"] < 10_000
    assert len(body["request_id"]) == 32


def test_the_openapi_schema_documents_the_recommend_response(http: httpx.Client) -> None:
    """The service encodes /recommend's JSON itself; the schema still says what it holds."""
    spec = http.get("/docs.json").json()
    ok = spec["paths"]["/recommend"]["post"]["responses"]["200"]["content"]["application/json"]
    schema = ok["schema"]
    assert set(schema["required"]) == set(RecommendResponse.model_fields)
    assert schema["properties"]["cache"]["enum"] == ["none", "l1", "l2", "precomputed", "miss"]
    assert "RecommendedItem" in spec["components"]["schemas"]


def test_unknown_user_is_a_cold_start_not_an_error(http: httpx.Client) -> None:
    body = _recommend(http, user_id=f"never-seen-{uuid.uuid4().hex}", k=5)
    other = _recommend(http, user_id=f"never-seen-{uuid.uuid4().hex}", k=5)

    assert len(body["items"]) == 5 and body["degraded"] is False
    assert body["ranker"] == "popularity" and body["items"] == other["items"]  # the popular items
    assert all(item["sources"] == ["popular"] for item in body["items"])


def test_recent_and_excluded_items_are_not_recommended(http: httpx.Client,
                                                       item_ids: list[str]) -> None:
    recent, excluded = item_ids[:2], item_ids[2:5]
    body = _recommend(http, user_id=_user("exclude"), k=20, recent_item_ids=recent,
                      exclude_item_ids=excluded)

    served = {item["item_id"] for item in body["items"]}
    assert len(served) == 20
    assert not served & set(recent + excluded)


def test_similar_items(http: httpx.Client, item_ids: list[str],
                       champion_tags: dict[str, str]) -> None:
    response = http.post("/similar_items", json={"item_id": item_ids[0], "k": 5})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["item_id"] == item_ids[0]
    assert [item["rank"] for item in body["items"]] == [1, 2, 3, 4, 5]
    assert item_ids[0] not in {item["item_id"] for item in body["items"]}
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert body["model_versions"] == champion_tags


def test_rank_scores_every_item_in_request_order(http: httpx.Client, item_ids: list[str]) -> None:
    asked = item_ids[:6]
    response = http.post("/rank", json={"user_id": _user("rank"), "item_ids": asked,
                                        "context": {"device": "web"}})

    assert response.status_code == 200, response.text
    body = response.json()
    assert [s["item_id"] for s in body["scores"]] == asked
    assert all(isinstance(s["score"], float) for s in body["scores"])
    assert body["ranker"] == "ranker" and body["degraded"] is False
    assert body["variant"] == "control"


def test_events_are_recorded(http: httpx.Client, item_ids: list[str]) -> None:
    user = _user("events")
    for n, event_type in enumerate(("view", "click", "purchase"), start=1):
        response = http.post("/events", json={"user_id": user, "item_id": item_ids[n],
                                              "type": event_type, "timestamp": 1_700_000_000.0})
        assert response.status_code == 200, response.text
        assert response.json() == {"user_id": user, "events_kept": n, "cache_invalidated": True,
                                   "duplicate": False}


def test_a_retried_event_id_is_answered_without_recording_it_again(
        http: httpx.Client, item_ids: list[str]) -> None:
    user = _user("event-id")
    event = {"user_id": user, "item_id": item_ids[0], "type": "click", "event_id": "9f1c-2b"}
    answers = [http.post("/events", json=event).json() for _ in range(3)]
    assert [(a["events_kept"], a["duplicate"]) for a in answers] == \
        [(1, False), (1, True), (1, True)]
    bad = http.post("/events", json={**event, "event_id": "has:colon"})
    assert bad.status_code == 400 and "event_id" in bad.text


# ---- cache --------------------------------------------------------------------------------

def test_repeat_is_an_l1_hit_and_an_event_invalidates_it(http: httpx.Client) -> None:
    user = _user("cache")
    first = _recommend(http, user_id=user, k=10)
    second = _recommend(http, user_id=user, k=10)
    third = _recommend(http, user_id=user, k=10)  # answered from the JSON the second one kept

    assert first["cache"] == "miss"
    assert second["cache"] == third["cache"] == "l1"
    assert second["items"] == third["items"] == first["items"]
    assert len({first["request_id"], second["request_id"], third["request_id"]}) == 3

    clicked = first["items"][0]["item_id"]
    event = http.post("/events", json={"user_id": user, "item_id": clicked, "type": "click"})
    assert event.status_code == 200, event.text
    assert event.json()["cache_invalidated"] is True

    after = _recommend(http, user_id=user, k=10)
    assert after["cache"] == "miss"
    assert clicked not in {item["item_id"] for item in after["items"]}
    assert len(after["items"]) == 10


def test_other_k_is_another_cache_entry(http: httpx.Client) -> None:
    user = _user("cache-k")
    _recommend(http, user_id=user, k=5)

    assert _recommend(http, user_id=user, k=6)["cache"] == "miss"
    assert _recommend(http, user_id=user, k=5)["cache"] == "l1"


# ---- client errors: 4xx that name the field, never a 5xx ---------------------------------

@pytest.mark.parametrize("body, field", [
    ({"user_id": "u", "k": 0}, "k"),
    ({"user_id": "u", "k": -3}, "k"),
    ({"user_id": "u", "k": MAX_K + 1}, "k"),
    ({"user_id": "u", "k": "ten"}, "k"),
    ({"user_id": "u", "k": "5"}, "k"),  # strict: a number in a string is not a number
    ({"user_id": "u", "k": True}, "k"),  # nor is a boolean
    ({"user_id": "u", "k": 2.5}, "k"),
    ({"user_id": "u", "context": {"hour": "21"}}, "context.hour"),
    ({"k": 5}, "user_id"),
    ({"user_id": ""}, "user_id"),
    ({"user_id": 12345}, "user_id"),
    ({"user_id": "u", "recent_item_ids": "i1"}, "recent_item_ids"),
    ({"user_id": "u", "exclude_item_ids": [1, 2]}, "exclude_item_ids.0"),
    ({"user_id": "u", "context": {"hour": 24}}, "context.hour"),
    ({"user_id": "u", "context": {"device": "fridge"}}, "context.device"),
    ({"user_id": "u", "context": {"timezone": "UTC"}}, "context.timezone"),
    ({"user_id": "u", "filters": {"categories": ["Drama"]}}, "filters.categories"),
    ({"user_id": "u", "recent_item_ids": ["x"] * (MAX_LIST_ITEMS + 1)}, "recent_item_ids"),
    ({"user_id": "u", "exclude_item_ids": ["x"] * (MAX_LIST_ITEMS + 1)}, "exclude_item_ids"),
    ({"user_id": "u", "exclude_item_ids": ["no-such-item"]}, "exclude_item_ids"),
    ({"user_id": "u", "recent_item_ids": ["no-such-item"]}, "recent_item_ids"),
    ({"user_id": "u", "filters": {"include_categories": ["Opera"]}},
     "filters.include_categories"),
    ({"user_id": "u", "filters": {"exclude_categories": ["Opera"]}},
     "filters.exclude_categories"),
])
def test_bad_recommend_request_is_400_naming_the_field(http: httpx.Client, body: dict[str, Any],
                                                       field: str) -> None:
    _assert_client_error(http.post("/recommend", json=body), field)


def test_unknown_item_error_names_the_item(http: httpx.Client) -> None:
    response = http.post("/recommend", json={"user_id": "u", "exclude_item_ids": ["no-such-item"]})

    assert "'no-such-item'" in error_text(response)


def test_unknown_category_error_lists_the_known_ones(http: httpx.Client) -> None:
    response = http.post("/recommend",
                         json={"user_id": "u", "filters": {"include_categories": ["Opera"]}})

    assert "'Opera'" in error_text(response) and "known:" in error_text(response)


@pytest.mark.parametrize("content", [b'{"user_id": "u",', b"not json", b"[1, 2]", b""])
def test_malformed_json_is_400(http: httpx.Client, content: bytes) -> None:
    response = http.post("/recommend", content=content,
                         headers={"content-type": "application/json"})

    assert response.status_code == 400, response.text
    assert error_body(response).code == "invalid_request"


def test_a_body_over_the_size_limit_is_413_before_it_is_read(http: httpx.Client) -> None:
    huge = json.dumps({"user_id": "u", "exclude_item_ids": ["x" * 100] * 50_000}).encode()
    assert len(huge) > 5_000_000

    response = http.post("/recommend", content=huge, headers={"content-type": "application/json"})

    assert response.status_code == 413, response.text
    body = error_body(response)
    assert body.code == "body_too_large" and "RECSYS_MAX_BODY_BYTES" in body.error


def test_a_streamed_body_over_the_limit_is_413(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the edge counts what arrives
        yield b'{"user_id": "u", "exclude_item_ids": ['
        for _ in range(MAX_BODY_BYTES // 1000 + 1):
            yield b'"' + b"x" * 1000 + b'",'
        yield b'"x"]}'

    response = http.post("/recommend", content=chunks(),
                         headers={"content-type": "application/json"})

    assert response.status_code == 413, response.text


@pytest.mark.parametrize("method, path, status, code", [
    ("GET", "/recommend", 405, "method_not_allowed"),
    ("POST", "/no-such-endpoint", 404, "not_found"),
])
def test_framework_errors_have_the_same_body(http: httpx.Client, method: str, path: str,
                                              status: int, code: str) -> None:
    response = http.request(method, path, json={})

    assert response.status_code == status, response.text
    assert error_body(response).code == code


def test_every_error_is_documented_with_the_error_body(http: httpx.Client) -> None:
    spec = http.get("/docs.json").json()
    assert set(spec["components"]["schemas"]["ErrorBody"]["required"]) == {"error", "code"}
    for route in ("/recommend", "/similar_items", "/rank", "/events", "/info"):
        responses = spec["paths"][route]["post"]["responses"]
        for status in ("400", "404", "413", "429", "500", "503", "504"):
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (route, status)


@pytest.mark.parametrize("endpoint, body, field, status", [
    ("/similar_items", {"item_id": "no-such-item"}, "item_id", 404),
    ("/similar_items", {"item_id": "i1", "k": 0}, "k", 400),
    ("/similar_items", {"item_id": "i1", "k": MAX_K + 1}, "k", 400),
    ("/similar_items", {"k": 3}, "item_id", 400),
    ("/rank", {"user_id": "u", "item_ids": []}, "item_ids", 400),
    ("/rank", {"user_id": "u", "item_ids": ["no-such-item"]}, "item_ids", 400),
    ("/rank", {"user_id": "u", "item_ids": ["x"] * (MAX_LIST_ITEMS + 1)}, "item_ids", 400),
    ("/rank", {"user_id": "u", "item_ids": "i1"}, "item_ids", 400),
    ("/events", {"user_id": "u", "item_id": "no-such-item"}, "item_id", 400),
    ("/events", {"user_id": "u", "item_id": "i1", "type": "teleport"}, "type", 400),
    ("/events", {"user_id": "u", "item_id": "i1", "timestamp": "yesterday"}, "timestamp", 400),
    ("/events", {"item_id": "i1"}, "user_id", 400),
])
def test_bad_request_to_other_endpoints(http: httpx.Client, item_ids: list[str], endpoint: str,
                                        body: dict[str, Any], field: str, status: int) -> None:
    body = {key: (item_ids[0] if value == "i1" else value) for key, value in body.items()}

    _assert_client_error(http.post(endpoint, json=body), field, status)


def test_client_errors_are_logged_in_one_line_without_a_traceback(
        server: ServerProcess, http: httpx.Client) -> None:
    marker = _user("logged")
    bad = [{"user_id": marker, "k": 0}, {"user_id": marker, "exclude_item_ids": ["nope"]},
           {"user_id": marker, "k": MAX_K + 1}, {"user_id": marker, "nope": 1}]
    before = server.log_path.read_text(errors="replace")
    for body in bad * 5:
        assert http.post("/recommend", json=body).status_code == 400

    def logged() -> str:
        return server.log_path.read_text(errors="replace")[len(before):]
    lines = wait_for(lambda: [line for line in logged().splitlines() if "-> 400" in line]
                     if logged().count("-> 400") >= len(bad) * 5 else None, 10.0,
                     "one log line per client error")
    assert len(lines) == len(bad) * 5
    assert all("[INFO]" in line and "POST /recommend -> 400 invalid_request" in line
               for line in lines), lines[:3]
    assert "ERROR" not in logged() and "Traceback" not in logged()


# ---- metrics ------------------------------------------------------------------------------

def test_metrics_for_one_recommend_request(http: httpx.Client, tmp_path: Path,
                                           item_ids: list[str]) -> None:
    before = http.get("/metrics").text
    _recommend(http, user_id=_user("metrics"), k=10, recent_item_ids=item_ids[:1])
    after = http.get("/metrics")

    assert after.status_code == 200
    delta = metric_delta(before, after.text)
    lines = [f"{key} {value:+g}" for key, value in sorted(delta.items())]
    (tmp_path / "metrics_one_request.txt").write_text("\n".join(lines) + "\n")
    print(f"\n/metrics increments for one /recommend ({tmp_path / 'metrics_one_request.txt'}):")
    print("\n".join(line for line in lines if "_bucket{" not in line))

    for stage in ("retrieval", "ranking"):
        assert delta[f'recsys_stage_seconds_count{{stage="{stage}"}}'] == 1
    assert delta['recsys_cache_lookups_total{kind="results",level="miss"}'] == 1
    assert delta['recsys_variant_exposures_total{variant="control"}'] == 1
    requests = {k: v for k, v in delta.items() if k.startswith("bentoml_service_request_total{")
                and 'endpoint="/recommend"' in k}
    assert list(requests.values()) == [1] and 'http_response_code="200"' in next(iter(requests))
    assert any(k.startswith("bentoml_service_request_duration_seconds_count{")
               and 'endpoint="/recommend"' in k for k in delta)


def test_no_request_of_this_module_was_answered_with_a_5xx(http: httpx.Client) -> None:
    samples = metric_samples(http.get("/metrics").text, "bentoml_service_request_total{")
    errors = {k: v for k, v in samples.items() if 'http_response_code="5' in k and v > 0}

    assert not errors
