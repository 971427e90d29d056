"""End to end: the served recommender degrades instead of failing (Redis outage, injected faults).

Two servers keep the start-up cost down:
- `resilient`: real Redis that a test stops and restarts, RECSYS_BREAKER_RESET_S=1 so breakers
  close again quickly, RECSYS_FAULTS=ranker:timeout (the ranker hangs past its timeout; the
  breaker opens after a few timeouts and lets one trial through each second) and
  RECSYS_DEGRADED_TTL_S=1 (degraded results expire from the cache after a second).
- `faulty`: RECSYS_FAULTS=ranker:error,ann:error with a breaker that never opens
  (RECSYS_BREAKER_FAILURES=1000), so every response shows the injected faults themselves.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devtools.local_redis import LocalRedis
from devtools.processes import ServerProcess, bentoml_serve
from tests.support.fixtures_models import TrainedModels
from tests.support.http import metric_samples, popular_item, wait_for

pytestmark = pytest.mark.slow

RANKER_REASONS = {"ranker_timeout", "ranker_circuit_open"}


def _serve(trained_models: TrainedModels, redis_server: LocalRedis, log_dir: Any,
           **settings: str) -> ServerProcess:
    env = {**trained_models.env(), "RECSYS_REDIS_URL": redis_server.url,
           **{f"RECSYS_{name.upper()}": value for name, value in settings.items()}}
    return bentoml_serve("service:Recommender", env, log_dir / "serve.log")


@pytest.fixture(scope="module")
def resilient(trained_models: TrainedModels, redis_server: LocalRedis,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    redis_server.start()
    with _serve(trained_models, redis_server, tmp_path_factory.mktemp("serve-resilient"),
                breaker_reset_s="1", faults="ranker:timeout", degraded_ttl_s="1") as server, \
            server.client() as client:
        yield client
    redis_server.start()  # whatever a failed test left behind, later modules get a Redis


@pytest.fixture(scope="module")
def faulty(trained_models: TrainedModels, redis_server: LocalRedis,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    redis_server.start()
    with _serve(trained_models, redis_server, tmp_path_factory.mktemp("serve-faulty"),
                faults="ranker:error,ann:error", breaker_failures="1000") as server, \
            server.client() as client:
        yield client


def _user(tag: str) -> str:
    return f"faults-{tag}-{uuid.uuid4().hex[:8]}"


def _recommend(client: httpx.Client, user: str, k: int = 10, **body: Any) -> dict[str, Any]:
    """With one recent item unless told otherwise: the models answer, as they do for anyone
    with history (a user without any is shown the popular items)."""
    body.setdefault("recent_item_ids", [popular_item(client)])
    response = client.post("/recommend", json={"user_id": user, "k": k, **body})
    assert response.status_code == 200, response.text
    result = response.json()
    assert len(result["items"]) == k
    return result


def _event(client: httpx.Client, user: str, item: str) -> httpx.Response:
    return client.post("/events", json={"user_id": user, "item_id": item, "type": "click"})


def _fallbacks(client: httpx.Client) -> dict[str, float]:
    return metric_samples(client.get("/metrics").text, "recsys_fallbacks_total{")


# ---- Redis outage -------------------------------------------------------------------------

def test_redis_outage_degrades_recommend_and_refuses_events(resilient: httpx.Client,
                                                            redis_server: LocalRedis) -> None:
    user = _user("outage")
    before = _recommend(resilient, user)
    item = before["items"][0]["item_id"]
    assert _event(resilient, user, item).status_code == 200

    redis_server.stop()
    try:
        during = _recommend(resilient, user)  # history, L2 and event store all unreachable
        assert during["degraded"] is True
        assert "history_unavailable" in during["degraded_reasons"]
        assert during["cache"] == "miss"
        for _ in range(3):  # the first failures and, once it is open, the breaker's refusals
            refused = _event(resilient, user, item)
            assert refused.status_code == 503, refused.text
            body = refused.json()
            assert body["code"] == "unavailable" and "event store" in body["error"], body
            assert refused.headers.get("retry-after") == "1"
        assert resilient.post("/rank", json={"user_id": user, "item_ids": [item]}).status_code \
            == 200
        assert resilient.get("/livez").status_code == 200
    finally:
        redis_server.start()

    recovered = wait_for(lambda: _event(resilient, user, item).status_code == 200, 15.0,
                         "POST /events answering 200 after Redis restarted", interval_s=0.25)
    assert recovered
    def reads_history() -> bool:
        return "history_unavailable" not in _recommend(resilient, _user("back"))["degraded_reasons"]
    assert wait_for(reads_history, 15.0, "/recommend reading history again", interval_s=0.25)


def test_redis_errors_are_counted(resilient: httpx.Client) -> None:
    samples = metric_samples(resilient.get("/metrics").text, "recsys_redis_errors_total{")

    assert any('component="history"' in key and value > 0 for key, value in samples.items())


# ---- ranker timeout -----------------------------------------------------------------------

def test_ranker_timeout_falls_back_to_the_fallback_ranker(resilient: httpx.Client) -> None:
    def timed_out() -> dict[str, Any] | None:
        result = _recommend(resilient, _user("timeout"))
        assert result["ranker"] == "fallback" and result["degraded"] is True
        assert set(result["degraded_reasons"]) & RANKER_REASONS
        # budget 150 ms: a hung ranker must not hold the request for its 5 s hang
        assert result["latency_ms"] < 1000
        return result if "ranker_timeout" in result["degraded_reasons"] else None

    # The breaker opens after RECSYS_BREAKER_FAILURES timeouts; its half-open trial (1 s later)
    # times out again, so a timeout shows up within a few requests either way.
    wait_for(timed_out, 10.0, "a response degraded with ranker_timeout", interval_s=0.3)
    fallbacks = _fallbacks(resilient)
    assert fallbacks.get('recsys_fallbacks_total{reason="ranker_timeout"}', 0) > 0


def test_degraded_results_are_cached_only_for_the_degraded_ttl(resilient: httpx.Client) -> None:
    user = _user("briefly")
    first = _recommend(resilient, user)
    repeat = _recommend(resilient, user)
    time.sleep(1.2)  # RECSYS_DEGRADED_TTL_S=1
    later = _recommend(resilient, user)

    assert first["degraded"] and repeat["degraded"]
    assert (first["cache"], repeat["cache"], later["cache"]) == ("miss", "l1", "miss")


# ---- ranker error and ANN error -----------------------------------------------------------

def test_ranker_error_serves_the_fallback_ranker(faulty: httpx.Client) -> None:
    result = _recommend(faulty, _user("ranker-error"), k=8)

    assert result["ranker"] == "fallback"
    assert result["degraded"] is True
    assert "ranker_error" in result["degraded_reasons"]
    assert [item["rank"] for item in result["items"]] == list(range(1, 9))


def test_ann_error_still_returns_k_items_from_other_sources(faulty: httpx.Client) -> None:
    result = _recommend(faulty, _user("ann-error"), k=20)

    assert "source_failed:ann" in result["degraded_reasons"]
    assert len({item["item_id"] for item in result["items"]}) == 20
    for item in result["items"]:
        assert item["sources"] and "ann" not in item["sources"]


def test_rank_endpoint_also_falls_back(faulty: httpx.Client) -> None:
    items = [i["item_id"] for i in _recommend(faulty, _user("rank"), k=3)["items"]]
    response = faulty.post("/rank", json={"user_id": _user("rank"), "item_ids": items})

    assert response.status_code == 200, response.text
    assert response.json()["ranker"] == "fallback"
    assert "ranker_error" in response.json()["degraded_reasons"]


def test_fault_metrics(faulty: httpx.Client) -> None:
    before = _fallbacks(faulty)
    _recommend(faulty, _user("metrics"))
    text = faulty.get("/metrics").text
    after = metric_samples(text, "recsys_fallbacks_total{")

    for reason in ("ranker_error", "source_failed"):
        key = f'recsys_fallbacks_total{{reason="{reason}"}}'
        assert after.get(key, 0) == before.get(key, 0) + 1, (key, before, after)
    failures = metric_samples(text, "recsys_source_failures_total{")
    assert any('source="ann"' in key and value > 0 for key, value in failures.items()), failures
    errors = {k: v for k, v in metric_samples(text, "bentoml_service_request_total{").items()
              if 'http_response_code="5' in k and v > 0}
    assert not errors


def test_repeated_faulty_requests_stay_fast_and_successful(faulty: httpx.Client) -> None:
    start = time.perf_counter()
    for n in range(10):
        _recommend(faulty, _user(f"repeat{n}"), k=5)

    assert time.perf_counter() - start < 10.0
