"""A Bento served without RECSYS_REDIS_URL: it says so at start-up, answers /recommend from its
in-process cache on a repeat, and refuses events with 503 (it has nowhere to keep them)."""
from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from devtools.processes import bentoml_serve
from recsys.app.assembly import WITHOUT_REDIS
from tests.support.fixtures_models import TrainedModels

pytestmark = pytest.mark.slow


def test_without_redis_the_service_says_so_and_caches_in_process(
        trained_models: TrainedModels, tmp_path: Path) -> None:
    env = {**trained_models.env(), "RECSYS_REDIS_URL": ""}
    with bentoml_serve("service:Recommender", env, tmp_path / "serve.log") as server, \
            server.client() as http:
        levels = [http.post("/recommend", json={"user_id": "1", "k": 3}).json()["cache"]
                  for _ in range(2)]
        event = http.post("/events", json={"user_id": "1", "item_id": _an_item(http)})
        log = server.log_path.read_text(errors="replace")
    assert WITHOUT_REDIS in log
    assert levels == ["miss", "l1"]
    assert event.status_code == 503, event.text


def _an_item(http: httpx.Client) -> str:
    return str(http.post("/recommend", json={"user_id": "2", "k": 1}).json()["items"][0]["item_id"])
