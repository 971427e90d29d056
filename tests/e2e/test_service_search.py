"""End to end: POST /search on `bentoml serve service:Recommender` (real Redis) over HTTP.

Two servers: `server` with the default search settings (stage timeouts widened, as the other
end-to-end tests do, so a loaded machine does not mark answers degraded), and `faulty` with
RECSYS_FAULTS=search_vector:error (the item-space retriever fails on every query).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devtools.local_redis import LocalRedis
from devtools.processes import bentoml_serve
from recsys.features import ItemCatalog
from recsys.models import artifacts
from serving.search_schemas import SearchResponse
from tests.support.fixtures_models import TrainedModels
from tests.support.http import RELAXED_LATENCY, error_fields, error_text, metric_samples

pytestmark = pytest.mark.slow

SEARCH_LATENCY = {"RECSYS_SEARCH_VECTOR_TIMEOUT_MS": "1000",
                  "RECSYS_SEARCH_PERSONAL_TIMEOUT_MS": "1000"}
USER = "u1"  # known at training time, with a history


def _serve(trained_models: TrainedModels, redis_server: LocalRedis,
           tmp_path_factory: pytest.TempPathFactory, name: str,
           **env: str) -> Iterator[httpx.Client]:
    redis_server.start()
    env = {**trained_models.env(), **RELAXED_LATENCY, **SEARCH_LATENCY,
           "RECSYS_REDIS_URL": redis_server.url, **env}
    with bentoml_serve("service:Recommender", env,
                       tmp_path_factory.mktemp(name) / "serve.log") as process, \
            process.client() as client:
        yield client


@pytest.fixture(scope="module")
def server(trained_models: TrainedModels, redis_server: LocalRedis,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    yield from _serve(trained_models, redis_server, tmp_path_factory, "serve-search")


@pytest.fixture(scope="module")
def faulty(trained_models: TrainedModels, redis_server: LocalRedis,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    yield from _serve(trained_models, redis_server, tmp_path_factory, "serve-search-faulty",
                      RECSYS_FAULTS="search_vector:error")


@pytest.fixture(scope="module")
def catalog(trained_models: TrainedModels) -> ItemCatalog:
    return artifacts.load_catalog(trained_models.refs("champion").paths["embedding"])


def _search(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/search", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    SearchResponse.model_validate(response.json())  # every answer, to the documented contract
    return response.json()


@pytest.mark.parametrize("query", ["", "   ", "\t\n"])
def test_an_empty_or_blank_query_is_a_400_naming_the_field(server: httpx.Client,
                                                           query: str) -> None:
    response = server.post("/search", json={"query": query})
    assert response.status_code == 400, response.text
    assert error_fields(response) == {"query"}


def test_a_bad_filter_is_a_400(server: httpx.Client) -> None:
    response = server.post("/search", json={"query": "x", "filters": {"categories": ["Nope"]}})
    assert response.status_code == 400, response.text
    assert "filters.categories" in error_text(response)


def test_a_query_that_matches_nothing_answers_an_empty_page(server: httpx.Client) -> None:
    found = _search(server, query="qqqzzzx wwvvk")
    assert found["items"] == [] and found["total"] == 0 and not found["degraded"]


def test_a_typo_finds_the_title(server: httpx.Client, catalog: ItemCatalog) -> None:
    first, _, id_word = str(catalog.titles[11]).split()  # "<genre word> <genre word> <id>"
    typo = first[0] + first[2:]  # the second letter dropped
    found = _search(server, query=f"{typo} {id_word}")
    assert found["items"][0]["title"] == str(catalog.titles[11])
    assert found["understood"]["corrections"] == {typo.lower(): first.lower()}


def test_a_category_word_filters(server: httpx.Client, catalog: ItemCatalog) -> None:
    found = _search(server, query="thrillers", page_size=30)
    column = catalog.genre_vocab.index("Thriller")
    rows = catalog.index_lookup()
    assert found["understood"]["categories"] == ["Thriller"]
    assert found["items"]
    assert all(catalog.genres[rows[i["item_id"]], column] > 0 for i in found["items"])


def test_a_user_personalises_and_no_user_does_not(server: httpx.Client) -> None:
    anonymous = _search(server, query="drama", page_size=20)
    personal = _search(server, query="drama", page_size=20, user_id=USER)
    assert not anonymous["personalised"] and personal["personalised"]
    assert all("personal" in i["retrievers"] for i in personal["items"])
    assert [i["item_id"] for i in personal["items"]] != \
        [i["item_id"] for i in anonymous["items"]]


def test_a_repeat_is_served_from_the_cache(server: httpx.Client) -> None:
    first = _search(server, query="Comedy 7")
    second = _search(server, query="comedy, 7!")  # the same normalised query
    assert (first["cache"], second["cache"]) == ("miss", "l1")
    assert second["items"] == first["items"]


def test_degraded_when_the_vector_retriever_fails(faulty: httpx.Client) -> None:
    found = _search(faulty, query="comedy")
    assert found["degraded"] and found["degraded_reasons"] == ["search_vector_error"]
    assert found["items"] and all(i["retrievers"] == ["bm25"] for i in found["items"])
    fallbacks = metric_samples(faulty.get("/metrics").text, "recsys_fallbacks_total{")
    assert fallbacks.get('recsys_fallbacks_total{reason="search_vector_error"}', 0) >= 1


def test_search_metrics_and_the_documented_error_body(server: httpx.Client) -> None:
    _search(server, query="horror")
    metrics = server.get("/metrics").text
    searches = metric_samples(metrics, "recsys_search_requests_total{")
    assert sum(searches.values()) >= 1
    stages = metric_samples(metrics, "recsys_stage_seconds_count{")
    assert {f'recsys_stage_seconds_count{{stage="search_{s}"}}' for s in
            ("parse", "bm25", "vector", "fusion")} <= set(stages)
    spec = server.get("/docs.json").json()
    answers = spec["paths"]["/search"]["post"]["responses"]
    assert answers["400"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorBody")
