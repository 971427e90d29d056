"""End to end: RECSYS_EVENTS_RATE_LIMIT reaches the served edge (429 with Retry-After past it)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devtools.processes import bentoml_serve
from tests.support.fixtures_models import TrainedModels
from tests.support.http import popular_item

pytestmark = pytest.mark.slow


def test_a_client_over_its_event_rate_gets_429_and_its_recommendations_still(
        trained_models: TrainedModels, redis_server: Any, tmp_path: Path) -> None:
    redis_server.start()
    env = {**trained_models.env(), "RECSYS_REDIS_URL": redis_server.url,
           "RECSYS_EVENTS_RATE_LIMIT": "5/minute"}
    with bentoml_serve("service:Recommender", env, tmp_path / "serve.log") as server, \
            server.client() as http:
        item = popular_item(http)
        answers = [http.post("/events", json={"user_id": "rate", "item_id": item})
                   for _ in range(6)]
        recommend = http.post("/recommend", json={"user_id": "rate", "k": 3})
    assert [a.status_code for a in answers] == [200] * 5 + [429], [a.text for a in answers]
    assert answers[-1].json()["code"] == "too_many_requests"
    assert 1 <= int(answers[-1].headers["retry-after"]) <= 60
    assert recommend.status_code == 200
