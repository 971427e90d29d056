"""End to end: a 50/50 champion/challenger experiment with every request shadow-scored.

RECSYS_SHADOW_FRACTION=1 shadows each champion-served request with the challenger, off the
request path, into a JSONL file; challenger-served requests are never shadowed.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.local_redis import LocalRedis
from devtools.processes import bentoml_serve
from recsys.experiments.shadow_records import ShadowRecord
from recsys.experiments.shadow_sinks import read_shadow_log
from tests.support.fixtures_models import TrainedModels
from tests.support.http import RELAXED_LATENCY, popular_item, wait_for

pytestmark = pytest.mark.slow

EXPERIMENT = {
    "active": "ranker-ab",
    "experiments": [{
        "name": "ranker-ab",
        "salt": "e2e",
        "variants": [{"name": "control", "alias": "champion", "weight": 50},
                     {"name": "treatment", "alias": "challenger", "weight": 50}],
    }],
}
ALIAS_OF = {v["name"]: v["alias"] for v in EXPERIMENT["experiments"][0]["variants"]}
USERS = [f"ab-user-{n}" for n in range(100)]


@dataclass(frozen=True)
class Served:
    client: httpx.Client
    shadow_log: Path
    tags: dict[str, dict[str, str]]  # alias -> kind -> tag


@pytest.fixture(scope="module")
def served(trained_models: TrainedModels, redis_server: LocalRedis,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("serve-experiment")
    experiment_file = root / "experiments.json"
    experiment_file.write_text(json.dumps(EXPERIMENT))
    shadow_log = root / "shadow.jsonl"
    redis_server.start()
    env = {**trained_models.env(), **RELAXED_LATENCY, "RECSYS_REDIS_URL": redis_server.url,
           "RECSYS_EXPERIMENT_FILE": str(experiment_file), "RECSYS_SHADOW_FRACTION": "1",
           "RECSYS_SHADOW_LOG": str(shadow_log)}
    with bentoml_serve("service:Recommender", env, root / "serve.log") as server, \
            server.client() as client:
        yield Served(client, shadow_log, json.loads(trained_models.models_file.read_text()))


@pytest.fixture(scope="module")
def first_pass(served: Served) -> dict[str, dict[str, Any]]:
    """One /recommend per user, by user id."""
    return {user: _recommend(served.client, user) for user in USERS}


def _recommend(client: httpx.Client, user: str) -> dict[str, Any]:
    """The user with one recent item: the variant's models answer (not the popular items)."""
    response = client.post("/recommend", json={"user_id": user, "k": 5,
                                               "recent_item_ids": [popular_item(client)]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["items"]) == 5
    return body


def test_info_shows_the_experiment_and_both_models(served: Served) -> None:
    info = served.client.post("/info", json={}).json()

    assert info["experiment"] == {"name": "ranker-ab", "variants": [
        {"name": "control", "alias": "champion", "weight": 50.0},
        {"name": "treatment", "alias": "challenger", "weight": 50.0}]}
    assert info["models"] == served.tags


def test_both_variants_serve_about_half_of_100_users(first_pass: dict[str, dict[str, Any]]) -> None:
    counts = Counter(body["variant"] for body in first_pass.values())

    assert set(counts) == {"control", "treatment"}
    assert 25 <= counts["control"] <= 75, counts


def test_a_user_always_gets_the_same_variant(served: Served,
                                             first_pass: dict[str, dict[str, Any]]) -> None:
    for user in USERS[:20]:
        for _ in range(2):
            assert _recommend(served.client, user)["variant"] == first_pass[user]["variant"]


def test_model_versions_are_the_variants_models(served: Served,
                                                first_pass: dict[str, dict[str, Any]]) -> None:
    for body in first_pass.values():
        assert body["model_versions"] == served.tags[ALIAS_OF[body["variant"]]]
        assert body["ranker"] == "ranker" and not body["degraded"], body["degraded_reasons"]


def test_rank_uses_the_users_variant(served: Served,
                                     first_pass: dict[str, dict[str, Any]]) -> None:
    for user in USERS[:10]:
        items = [item["item_id"] for item in first_pass[user]["items"]]
        response = served.client.post("/rank", json={"user_id": user, "item_ids": items})
        assert response.status_code == 200, response.text
        assert response.json()["variant"] == first_pass[user]["variant"]
        assert response.json()["model_versions"] == first_pass[user]["model_versions"]


def test_champion_requests_are_shadowed_by_the_challenger(
        served: Served, first_pass: dict[str, dict[str, Any]]) -> None:
    champion_ids = {b["request_id"]: b for b in first_pass.values() if b["variant"] == "control"}
    challenger_ids = {b["request_id"] for b in first_pass.values() if b["variant"] != "control"}

    def shadowed() -> list[ShadowRecord] | None:
        if not served.shadow_log.exists():
            return None
        records = read_shadow_log(served.shadow_log)
        done = {r.request_id for r in records}
        return records if set(champion_ids) <= done else None

    records = wait_for(shadowed, 20.0, "a shadow record for every champion-served request",
                       interval_s=0.25)
    by_id = {r.request_id: r for r in records}
    assert not set(by_id) & challenger_ids
    for request_id, body in champion_ids.items():
        record = by_id[request_id]
        assert record.user_id == body["user_id"] and record.k == 5
        assert list(record.champion.items) == [i["item_id"] for i in body["items"]]
        assert dict(record.champion.versions) == served.tags["champion"]
        assert record.error is None, record.error
        assert record.challenger is not None
        assert dict(record.challenger.versions) == served.tags["challenger"]
        assert len(record.challenger.items) == 5
        assert record.agreement is not None


def test_shadow_metrics_count_the_records(served: Served,
                                          first_pass: dict[str, dict[str, Any]]) -> None:
    text = served.client.get("/metrics").text

    assert 'recsys_variant_exposures_total{variant="control"}' in text
    assert 'recsys_variant_exposures_total{variant="treatment"}' in text
    assert "recsys_shadow_total{" in text
