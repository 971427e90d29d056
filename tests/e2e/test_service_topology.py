"""End to end: RECSYS_TOPOLOGY=services, the user tower and the ranker in their own BentoML
services with adaptive batching (and without, RECSYS_BATCHING=false), called by the API service
over BentoML's service-to-service transport. Half the users are routed to the challenger, whose
user tower reads a shorter history than the champion's: the services split each alias's input
by its own length.

Stage timeouts and the batching latency target are widened for this server: on a 2-core
machine three processes compete for the CPU under a burst, and the default 60 ms ranking timeout
(or the dispatcher's 200 ms target, which it enforces by answering 503 "overloaded") would turn
much of the burst into fallback-ranker responses, hiding whether the remote ranker answers at all.
"""
from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.local_redis import LocalRedis
from devtools.processes import ServerProcess, bentoml_serve
from recsys.app.assembly import build_runtime
from recsys.experiments.routing import active_experiment, assign
from recsys.models.bundles import EmbeddingBundle
from recsys.pipeline.request import RecommendRequest
from recsys.settings import ServingSettings
from recsys.telemetry import Telemetry
from tests.support.fixtures_models import CHALLENGER_HISTORY_LEN, TrainedModels
from tests.support.http import metric_delta, metric_samples

pytestmark = pytest.mark.slow

BURST_REQUESTS = 96
BURST_CONCURRENCY = 16
BATCH_METRIC = "bentoml_service_adaptive_batch_size"
EXPERIMENT = {"active": "history-lengths", "experiments": [{
    "name": "history-lengths", "salt": "topology",
    "variants": [{"name": "control", "alias": "champion", "weight": 50},
                 {"name": "treatment", "alias": "challenger", "weight": 50}]}]}


def users_of(experiment_file: Path, variant: str, prefix: str, count: int) -> list[str]:
    """The first `count` user ids "<prefix>-<n>" that the experiment routes to `variant`."""
    experiment = active_experiment(experiment_file)
    users = (f"{prefix}-{n}" for n in range(100_000))
    return [u for u in users if assign(experiment, u).name == variant][:count]


@pytest.fixture(scope="module")
def experiment_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("experiment") / "experiments.json"
    path.write_text(json.dumps(EXPERIMENT))
    return path


@pytest.fixture(scope="module")
def server(trained_models: TrainedModels, redis_server: LocalRedis, experiment_file: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    redis_server.start()
    # trace exporters configured for the API and the user tower (not the ranker service),
    # RECSYS_TRACE_REQUESTS left false: each of the two warns
    bentoml_config = tmp_path_factory.mktemp("bentoml-config") / "bentoml.yaml"
    bentoml_config.write_text("services:\n  recommender:\n    tracing:\n"
                              "      exporter_type: in_memory\n"
                              "  UserTowerService:\n    tracing:\n"
                              "      exporter_type: in_memory\n")
    env = {**trained_models.env(), "RECSYS_REDIS_URL": redis_server.url,
           "BENTOML_CONFIG": str(bentoml_config),
           "RECSYS_TOPOLOGY": "services", "RECSYS_BUDGET_MS": "3000",
           "RECSYS_TOWER_TIMEOUT_MS": "1000", "RECSYS_RETRIEVAL_TIMEOUT_MS": "1000",
           "RECSYS_RANKING_TIMEOUT_MS": "1000", "RECSYS_MAX_LATENCY_MS": "2000",
           "RECSYS_EXPERIMENT_FILE": str(experiment_file)}
    with bentoml_serve("service:Recommender", env,
                        tmp_path_factory.mktemp("serve-services") / "serve.log") as process:
        yield process


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client(timeout_s=30.0) as client:
        yield client


@pytest.fixture(scope="module")
def item_ids(http: httpx.Client, experiment_file: Path) -> list[str]:
    [user] = users_of(experiment_file, "control", "topology-catalogue", 1)
    response = http.post("/recommend", json={"user_id": user, "k": 50})
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


@dataclass(frozen=True)
class Burst:
    responses: list[httpx.Response]
    metrics: dict[str, float]  # what the burst added to each /metrics sample


@pytest.fixture(scope="module")
def burst(server: ServerProcess, http: httpx.Client, item_ids: list[str],
          experiment_file: Path) -> Burst:
    """Concurrent /recommend calls of champion users. Each carries its own recent items, so
    each has its own user vector (they are cached by history: one another test asked for first
    may already hold, in this server's caches or in Redis) and reaches the ranker service."""
    users = users_of(experiment_file, "control", "burst", BURST_REQUESTS)

    def call(n: int) -> httpx.Response:
        size = len(item_ids)
        recent = [item_ids[n % size], item_ids[(n // size + n + 1) % size]]  # distinct pairs
        body = {"user_id": users[n], "k": 10, "recent_item_ids": recent}
        with httpx.Client(base_url=server.url, timeout=30.0) as client:
            return client.post("/recommend", json=body)

    before = http.get("/metrics").text
    with ThreadPoolExecutor(BURST_CONCURRENCY) as pool:
        responses = list(pool.map(call, range(BURST_REQUESTS)))
    return Burst(responses, metric_delta(before, http.get("/metrics").text))


def test_recommend_through_the_model_services(http: httpx.Client, trained_models: TrainedModels,
                                              item_ids: list[str], experiment_file: Path) -> None:
    [user] = users_of(experiment_file, "control", "topology-one", 1)
    response = http.post("/recommend", json={"user_id": user, "k": 10,
                                             "recent_item_ids": item_ids[:2]})

    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["items"]) == 10
    assert body["ranker"] == "ranker" and body["degraded"] is False, body["degraded_reasons"]
    assert body["model_versions"] == json.loads(trained_models.models_file.read_text())["champion"]


def test_a_challenger_with_a_shorter_history_answers_as_it_does_in_process(
        http: httpx.Client, trained_models: TrainedModels, experiment_file: Path) -> None:
    """The API packs the challenger's own history length; the tower service splits by it. The
    answer is the one the inline topology computes for the same request and models."""
    challenger = trained_models.refs("challenger")
    assert EmbeddingBundle.load(challenger.paths["embedding"]).history_len == \
        CHALLENGER_HISTORY_LEN < EmbeddingBundle.load(
            trained_models.refs("champion").paths["embedding"]).history_len
    catalog = EmbeddingBundle.load(challenger.paths["embedding"]).catalog
    recent = [str(i) for i in catalog.item_ids[1:CHALLENGER_HISTORY_LEN + 5]]  # more than it reads
    [user] = users_of(experiment_file, "treatment", "topology-challenger", 1)

    response = http.post("/recommend", json={"user_id": user, "k": 10, "recent_item_ids": recent})

    assert response.status_code == 200, response.text
    served = response.json()
    assert served["variant"] == "treatment" and served["model_versions"] == challenger.versions
    assert served["ranker"] == "ranker" and not served["degraded"], served["degraded_reasons"]
    expected = in_process_answer(trained_models, experiment_file, user, recent)
    assert [i["item_id"] for i in served["items"]] == [i["item_id"] for i in expected["items"]]
    assert [i["score"] for i in served["items"]] == \
        pytest.approx([i["score"] for i in expected["items"]], abs=1e-5)


def in_process_answer(trained_models: TrainedModels, experiment_file: Path, user: str,
                      recent: list[str]) -> dict[str, Any]:
    """What the inline topology answers for one request (no Redis: no recorded events)."""
    settings = ServingSettings(experiment_file=experiment_file, budget_ms=3000,
                               tower_timeout_ms=1000, retrieval_timeout_ms=1000,
                               ranking_timeout_ms=1000)
    refs = [trained_models.refs("champion"), trained_models.refs("challenger")]

    async def answer() -> dict[str, Any]:
        runtime = build_runtime(settings, refs, Telemetry())
        try:
            answer = await runtime.pipeline.respond(
                RecommendRequest(user, 10, recent_items=tuple(recent)))
            return answer.result
        finally:
            await runtime.aclose()
    return asyncio.run(answer())


def test_info_reports_the_services_topology(http: httpx.Client) -> None:
    assert http.post("/info", json={}).json()["topology"] == "services"


def test_rank_through_the_ranker_service(http: httpx.Client, item_ids: list[str],
                                         experiment_file: Path) -> None:
    [user] = users_of(experiment_file, "control", "topology-rank", 1)
    response = http.post("/rank", json={"user_id": user, "item_ids": item_ids[:5]})

    assert response.status_code == 200, response.text
    assert response.json()["ranker"] == "ranker"


def test_burst_has_no_server_errors(burst: Burst) -> None:
    statuses = Counter(r.status_code for r in burst.responses)

    assert statuses == {200: BURST_REQUESTS}, statuses
    rankers = Counter(r.json()["ranker"] for r in burst.responses)
    assert rankers["ranker"] > BURST_REQUESTS // 2, rankers  # mostly the remote primary ranker
    assert all(len(r.json()["items"]) == 10 for r in burst.responses)


def test_adaptive_batching_metrics_after_the_burst(burst: Burst) -> None:
    counts = _totals_by("method_name", _named(burst.metrics, f"{BATCH_METRIC}_count{{"))
    sums = _totals_by("method_name", _named(burst.metrics, f"{BATCH_METRIC}_sum{{"))
    batches = ", ".join(f"{m}: {int(counts[m])} batches, {int(sums[m])} rows"
                        for m in sorted(counts))
    print(f"\nadaptive batches of {BURST_REQUESTS} requests, {BURST_CONCURRENCY} at a time: "
          f"{batches}")

    # every burst answer the remote ranker scored went through the ranker service
    remote = sum(r.json()["ranker"] == "ranker" for r in burst.responses)
    assert sums.get("score_champion", 0) >= remote > BURST_REQUESTS // 2, (remote, sums)
    # every user vector no cache held was encoded by the tower service (a miss is counted once
    # the vector is in hand; the burst's histories are distinct, so none waited on another's)
    missed = sum(_named(burst.metrics,
                        'recsys_cache_lookups_total{kind="user_vector",level="miss"').values())
    assert sums.get("encode_champion", 0) >= missed, (missed, sums)
    assert missed > BURST_REQUESTS // 2, missed  # most of the burst reached the tower service
    # under concurrency the dispatcher merged at least some requests into one batch
    assert any(sums[m] > counts[m] for m in counts), (counts, sums)
    errors = {k: v for k, v in _named(burst.metrics, "bentoml_service_request_total{").items()
              if 'http_response_code="5' in k and v > 0}
    assert not errors


@pytest.fixture(scope="module")
def unbatched(trained_models: TrainedModels, redis_server: LocalRedis,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The same topology with RECSYS_BATCHING=false: the baseline the benchmark compares with."""
    redis_server.start()
    env = {**trained_models.env(), "RECSYS_REDIS_URL": redis_server.url,
           "RECSYS_TOPOLOGY": "services", "RECSYS_BATCHING": "false", "RECSYS_BUDGET_MS": "3000",
           "RECSYS_TOWER_TIMEOUT_MS": "1000", "RECSYS_RETRIEVAL_TIMEOUT_MS": "1000",
           "RECSYS_RANKING_TIMEOUT_MS": "1000", "RECSYS_TRACE_REQUESTS": "true",
           "RECSYS_REDIS_TIMEOUT_MS": "1000"}  # three busy processes on 2 cores: widen them all
    with bentoml_serve("service:Recommender", env,
                        tmp_path_factory.mktemp("serve-unbatched") / "serve.log") as process:
        yield process


def test_batching_off_serves_through_the_model_services_one_request_per_call(
        unbatched: ServerProcess) -> None:
    with unbatched.client(timeout_s=30.0) as client:
        first = client.post("/recommend", json={"user_id": "unbatched-catalogue", "k": 30})
    items = [item["item_id"] for item in first.json()["items"]]

    def call(n: int) -> httpx.Response:  # its own recent item: its own user vector (not the
        # most popular item's, items[0], which the warm-up encoded and cached already)
        body = {"user_id": f"unbatched-{n}", "k": 10, "recent_item_ids": [items[n + 1]]}
        with httpx.Client(base_url=unbatched.url, timeout=30.0) as client:
            return client.post("/recommend", json=body)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(call, range(24)))

    assert Counter(r.status_code for r in responses) == {200: 24}
    assert all(r.json()["ranker"] == "ranker" and not r.json()["degraded"] for r in responses), \
        [r.json()["degraded_reasons"] for r in responses]
    with unbatched.client(timeout_s=30.0) as client:
        text = client.get("/metrics").text
    requests = _totals_by("endpoint", metric_samples(text, "bentoml_service_request_total{"))
    assert requests.get("/score_champion", 0) >= 24, sorted(requests)  # the ranker service ran
    assert requests.get("/encode_champion", 0) >= 24, sorted(requests)
    assert not metric_samples(text, f"{BATCH_METRIC}_count{{")  # and no dispatcher batched


def test_requests_are_left_out_of_tracing_by_default(server: ServerProcess, burst: Burst) -> None:
    """The API's and the model services' access logs carry no trace id (RECSYS_TRACE_REQUESTS
    false: BentoML's OpenTelemetry middleware passes them by, serving/tracing.py), even with an
    exporter configured, which each service with one warns of: the API's and the user tower's."""
    lines = _access_lines(server, ("/recommend", "/score_champion", "/encode_champion"))
    assert {route for route, _ in lines} == {"/recommend", "/score_champion", "/encode_champion"}
    assert not [trace for _, trace in lines if trace is not None]
    # the configured exporter is named in a warning (serving/tracing.py warn_if_untraced)
    # the services with an exporter configured, and those only, warn of it
    warned = re.findall(r"\[(?:entry_)?service:(\w+):\d+\] BentoML's tracing exports to "
                        r"in_memory, but RECSYS_TRACE_REQUESTS is false",
                        server.log_path.read_text(errors="replace"))
    assert set(warned) == {"recommender", "UserTowerService"}


def test_traced_requests_carry_one_trace_from_the_api_to_the_model_services(
        unbatched: ServerProcess) -> None:
    """RECSYS_TRACE_REQUESTS=true (the unbatched server): every request has a trace id, and a
    model service's call shares the trace of the /recommend request that made it."""
    with unbatched.client(timeout_s=30.0) as client:  # a request of its own, if run alone
        response = client.post("/recommend", json={"user_id": "unbatched-traced", "k": 10,
                                                    "recent_item_ids": []})
    assert response.status_code == 200, response.text
    lines = _access_lines(unbatched, ("/recommend", "/score_champion", "/encode_champion"))
    assert lines and all(trace for _, trace in lines), lines[:5]
    api = {trace for route, trace in lines if route == "/recommend"}
    assert api & {trace for route, trace in lines if route == "/score_champion"}


def _access_lines(server: ServerProcess, routes: tuple[str, ...]) -> list[tuple[str, str | None]]:
    """(route, trace id or None) of each access-log line of `server` for one of `routes`."""
    found = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        route = next((r for r in routes if f"path={r}," in line), None)
        if route is not None and "method=POST" in line:
            trace = line.split("(trace=", 1)[1].split(",", 1)[0] if "(trace=" in line else None
            found.append((route, trace))
    return found


def _named(samples: dict[str, float], prefix: str) -> dict[str, float]:
    return {key: value for key, value in samples.items() if key.startswith(prefix)}


def _totals_by(label: str, samples: dict[str, float]) -> dict[str, float]:
    """Sample values summed per value of one label (samples without it are left out)."""
    totals: dict[str, float] = {}
    for key, value in samples.items():
        group = _label(key, label)
        if group:
            totals[group] = totals.get(group, 0.0) + value
    return totals


def _label(key: str, name: str) -> str | None:
    marker = f'{name}="'
    if marker not in key:
        return None
    return key.split(marker, 1)[1].split('"', 1)[0]
