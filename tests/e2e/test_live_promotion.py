"""End to end: `bentoml serve` with two workers following a real MLflow tracking server
(RECSYS_MODEL_SOURCE=registry) while a bounded load runs against 127.0.0.1: a promotion and a
rollback reach every worker without a restart and without a failed request; a set that fails to
load is not served and /info and /metrics say why."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pytest

from devtools.local_redis import LocalRedis
from devtools.processes import QUIET_ENV, REPO_ROOT, ServerProcess, bentoml_serve
from registry import CHALLENGER, CHAMPION, log_bundle, register_model_set
from tests.support.bundle_factory import input_example, make_embedding_bundle, make_ranker_bundle
from tests.support.fixtures_models import TrainedModels
from tests.support.http import RELAXED_LATENCY, metric_samples, wait_for
from tests.support.load import Load
from tests.support.registry_server import RegistryServer, registry_copy

pytestmark = pytest.mark.slow

POLL_S = 1.0
SWITCH_WINDOW_S = 20.0  # a poll, then fetch, verify, load, warm and prefill, per worker


@dataclass(frozen=True)
class Live:
    server: ServerProcess
    registry: RegistryServer
    tags: dict[str, dict[str, str]]  # alias -> kind -> tag, as trained


@pytest.fixture(scope="module")
def live(trained_models: TrainedModels, redis_server: LocalRedis,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("live")
    redis_server.start()
    with registry_copy(trained_models, root / "registry") as registry:
        env = {**trained_models.env(), **RELAXED_LATENCY, "RECSYS_REDIS_URL": redis_server.url,
               "RECSYS_MODEL_SOURCE": "registry", "RECSYS_REGISTRY_URI": registry.url,
               "RECSYS_REGISTRY_POLL_S": str(POLL_S), "RECSYS_WORKERS": "2",
               "RECSYS_MODEL_CACHE_DIR": str(root / "model-cache"), "RECSYS_WARM_USERS": "50"}
        tags = {alias: trained_models.refs(alias).versions for alias in (CHAMPION, CHALLENGER)}
        with bentoml_serve("service:Recommender", env, root / "serve.log") as server:
            yield Live(server, registry, tags)


def versions_served(load: Load) -> list[tuple[float, dict[str, str]]]:
    return [(sent, body["model_versions"]) for sent, status, body in load.answers
            if status == 200]


def switch(load: Load, before: dict[str, str], after: dict[str, str]) -> tuple[float, float]:
    """(first answer with `after`, last answer with `before`), in seconds of the load's clock."""
    served = versions_served(load)
    assert {frozenset(v.items()) for _, v in served} <= {frozenset(before.items()),
                                                        frozenset(after.items())}
    first_new = min(t for t, v in served if v == after)
    last_old = max((t for t, v in served if v == before), default=first_new)
    return first_new, last_old


def info(live: Live) -> dict[str, Any]:
    return httpx.post(f"{live.server.url}/info", json={}, timeout=10).json()["model_source"]


def answer_versions(live: Live) -> dict[str, str]:
    return httpx.post(f"{live.server.url}/recommend", json={"user_id": "u3", "k": 3},
                      timeout=10).json()["model_versions"]


def test_a_promotion_reaches_every_worker_under_load_without_a_failed_request(
        live: Live) -> None:
    with Load(live.server.url) as load:
        time.sleep(3)  # traffic on the champion first
        promoted_at = time.monotonic()
        live.registry.registry().promote(CHALLENGER)
        wait_for(lambda: sum(1 for _, v in versions_served(load)[-40:]
                             if v == live.tags[CHALLENGER]) == 40,
                 SWITCH_WINDOW_S * 2, "40 answers in a row from the new champion",
                 interval_s=0.2)
        time.sleep(2)  # and traffic after it
    summary = load.summary()
    first_new, last_old = switch(load, live.tags[CHAMPION], live.tags[CHALLENGER])
    print(f"\npromotion under load: {summary}; first answer of the new set "
          f"{first_new - promoted_at:.1f} s after the alias moved, the last of the old "
          f"{last_old - first_new:.1f} s after that; swaps: {info(live)['last_swap']}")

    assert summary["failed"] == 0, summary
    assert first_new - promoted_at < SWITCH_WINDOW_S
    assert last_old - first_new < SWITCH_WINDOW_S  # the second worker's swap, at the latest
    after_switch = [v for t, v in versions_served(load) if t > last_old]
    assert after_switch and all(v == live.tags[CHALLENGER] for v in after_switch)  # none back
    assert info(live)["serving"] == {CHAMPION: live.tags[CHALLENGER]}


def test_a_rollback_from_the_cli_is_live_too(live: Live) -> None:
    command = [sys.executable, "-m", "registry", "rollback"]
    env = {**os.environ, **QUIET_ENV, "RECSYS_TRACKING_URI": live.registry.store_uri}
    with Load(live.server.url) as load:
        time.sleep(1)
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        wait_for(lambda: sum(1 for _, v in versions_served(load)[-40:]
                             if v == live.tags[CHAMPION]) == 40,
                 SWITCH_WINDOW_S * 2, "40 answers in a row from the previous champion",
                 interval_s=0.2)
    summary = load.summary()
    print(f"\nrollback under load: {summary}")

    assert summary["failed"] == 0, summary
    assert answer_versions(live) == live.tags[CHAMPION]


def test_a_set_that_fails_to_load_is_not_served_and_says_why(
        live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new set registered, one of its files altered in the artifact store, then promoted."""
    embedding = make_embedding_bundle(tmp_path / "embedding")
    make_ranker_bundle(tmp_path / "ranker", embedding.fingerprint())
    make_ranker_bundle(tmp_path / "fallback", embedding.fingerprint(), kind="fallback_ranker")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", live.registry.store_uri)
    mlflow.set_tracking_uri(live.registry.store_uri)
    try:
        mlflow.set_experiment(experiment_id=mlflow.create_experiment(
            "broken-set", artifact_location=(tmp_path / "artifacts").as_uri()))
        with mlflow.start_run():
            uris = [log_bundle(tmp_path / sub, kind, input_example(tmp_path / sub))
                    for sub, kind in (("embedding", "embedding"), ("ranker", "ranker"),
                                      ("fallback", "fallback_ranker"))]
        register_model_set(*uris, alias=CHALLENGER)
    finally:
        mlflow.set_tracking_uri(None)
    [stored] = [p for p in (tmp_path / "artifacts").rglob("scaler.json")
                if p.parent.name == "ranker"]
    stored.write_text(stored.read_text() + " ")
    serving = answer_versions(live)
    before = metric_samples(httpx.get(f"{live.server.url}/metrics").text,
                            "recsys_model_load_failures_total{")

    live.registry.registry().promote(CHALLENGER)
    failure = wait_for(lambda: (info(live)["last_failure"] or {}).get("stage") == "load"
                       and info(live)["last_failure"], SWITCH_WINDOW_S,
                       "/info reporting the failed load")

    assert failure["stage"] == "load" and "checksum mismatch for scaler.json" in failure["error"]
    assert answer_versions(live) == serving  # the old set goes on
    after = metric_samples(httpx.get(f"{live.server.url}/metrics").text,
                           "recsys_model_load_failures_total{")
    key = 'recsys_model_load_failures_total{error="ArtifactError",stage="load"}'
    assert after.get(key, 0) > before.get(key, 0)
