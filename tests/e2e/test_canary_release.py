"""End to end: canary releases on `bentoml serve` (two workers) following a real MLflow tracking
server, with the canary's state in a real Redis, steered through the admin endpoint and the CLI.

A good challenger grows through every stage under load, survives a restart of the service in
the middle (it resumes at the same stage) and is promoted in the registry; a bad challenger
(its ranker made to fail, so every answer it gives is degraded) is rolled back at the first
stage while the replayed held-out traffic goes on; the admin endpoints refuse a wrong token.

The p99 and click-through guards are relaxed here (tests/recsys/experiments/test_canary.py
holds them to their defaults): a two-core CI machine's latency noise and a few hundred replayed
interactions are no basis for either.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.local_redis import LocalRedis
from devtools.processes import QUIET_ENV, REPO_ROOT, ServerProcess, bentoml_serve
from registry import CHALLENGER, CHAMPION, PREVIOUS_CHAMPION
from tests.support.fixtures_models import TrainedModels
from tests.support.http import RELAXED_LATENCY, error_body, wait_for
from tests.support.load import Load
from tests.support.registry_server import RegistryServer, registry_copy

pytestmark = pytest.mark.slow

TOKEN = "canary-test-token"
GUARDS = {"min_requests": 300, "min_impressions": 10**6, "min_stage_seconds": 4,
          "max_p99_increase_ms": 500}
# The fixture's data. Its models were trained on all of it, so the replayed events are ones the
# service knows (and never recommends): traffic for the guards here, not clicks.
SYNTHETIC = {"RECSYS_SYNTHETIC_USERS": "150", "RECSYS_SYNTHETIC_ITEMS": "300",
             "RECSYS_REPLAY_HOLDOUT": "0.2"}


@dataclass
class Canaries:
    models: TrainedModels
    registry: RegistryServer
    redis: LocalRedis
    root: Path
    tags: dict[str, dict[str, str]]  # alias -> kind -> tag, as trained

    def env(self, faults: str = "") -> dict[str, str]:
        return {**self.models.env(), **RELAXED_LATENCY, "RECSYS_REDIS_URL": self.redis.url,
                "RECSYS_MODEL_SOURCE": "registry", "RECSYS_REGISTRY_URI": self.registry.url,
                "RECSYS_REGISTRY_POLL_S": "1", "RECSYS_WORKERS": "2",
                "RECSYS_MODEL_CACHE_DIR": str(self.root / "model-cache"),
                "RECSYS_WARM_USERS": "20", "RECSYS_CANARY_TICK_S": "0.5",
                "RECSYS_ADMIN_TOKEN": TOKEN, "RECSYS_FAULTS": faults}

    @contextmanager
    def serving(self, name: str, faults: str = "") -> Iterator[ServerProcess]:
        with bentoml_serve("service:Recommender", self.env(faults),
                           self.root / f"{name}.log") as server:
            yield server


@pytest.fixture(scope="module")
def canaries(trained_models: TrainedModels, redis_server: LocalRedis,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Canaries]:
    root = tmp_path_factory.mktemp("canary")
    redis_server.start()
    with registry_copy(trained_models, root / "registry") as registry:
        tags = {alias: trained_models.refs(alias).versions for alias in (CHAMPION, CHALLENGER)}
        yield Canaries(trained_models, registry, redis_server, root, tags)


def admin(server: ServerProcess, path: str, body: dict[str, Any],
          token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=30)


def canary_status(server: ServerProcess) -> dict[str, Any]:
    response = admin(server, "/admin/canary", {"action": "status", "verdicts": 1})
    assert response.status_code == 200, response.text
    return dict(response.json())


def stage_of(server: ServerProcess) -> tuple[str, int]:
    canary = canary_status(server)["canary"]
    return canary["status"], canary["stage"]


def registry_cli(canaries: Canaries, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **QUIET_ENV, "RECSYS_TRACKING_URI": canaries.registry.store_uri,
           "RECSYS_ADMIN_TOKEN": TOKEN}
    return subprocess.run([sys.executable, "-m", "registry", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_admin_endpoints_need_the_token(canaries: Canaries) -> None:
    with canaries.serving("auth") as server:
        missing = admin(server, "/admin/canary", {"action": "status"}, token=None)
        wrong = admin(server, "/admin/canary", {"action": "status"}, token="guess")
        right = admin(server, "/admin/canary", {"action": "status"})
        bad_action = admin(server, "/admin/canary", {"action": "explode"})

    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert error_body(wrong).code == "unauthorized"
    assert wrong.headers["www-authenticate"].startswith("Bearer")
    assert bad_action.status_code == 400 and error_body(bad_action).fields[0].field == "action"


def test_a_good_challenger_is_promoted_through_every_stage_across_a_restart(
        canaries: Canaries) -> None:
    with canaries.serving("good-1") as server:
        done = registry_cli(canaries, "canary", "start", "--url", server.url,
                            "--stages", "0.2,0.5,1", "--min-requests", "300",
                            "--min-impressions", str(10**6), "--min-stage-seconds", "4")
        assert done.returncode == 0, done.stderr
        assert "running at stage 0 (20% of users)" in done.stdout
        canary_id = canary_status(server)["canary"]["id"]
        assert admin(server, "/admin/canary", {"action": "pause"}).status_code == 200
        with Load(server.url, max_seconds=90) as first:
            wait_for(lambda: stage_of(server) == ("paused", 0), 10, "the pause")
            assert canary_status(server)["canary"]["history"][-1]["why"] == \
                "paused by an operator"
            admin(server, "/admin/canary", {"action": "resume"})
            wait_for(lambda: stage_of(server)[1] >= 1, 60, "the canary's second stage")
        in_stage = stage_of(server)
    restarted_at = time.monotonic()
    with canaries.serving("good-2") as server:
        resumed = wait_for(lambda: httpx.post(f"{server.url}/info", json={}, timeout=10)
                           .json()["canary"], 10, "the worker's canary")
        print(f"\ncanary {canary_id} at {in_stage} before the restart, "
              f"{(resumed['status'], resumed['stage'])} after it "
              f"({time.monotonic() - restarted_at:.1f} s later)")
        assert (resumed["id"], resumed["status"], resumed["stage"]) == (canary_id, *in_stage)
        with Load(server.url, max_seconds=120) as second:
            final = wait_for(lambda: canary_status(server)["canary"]["status"] != "running"
                             and canary_status(server), 90, "the canary's end")
            wait_for(lambda: second.answers and all(
                body.get("model_versions") == canaries.tags[CHALLENGER]
                for _, _, body in second.answers[-30:]), 30, "the promoted set on every answer")

    canary = final["canary"]
    print(f"canary history: {[(h['why'], h['to']) for h in canary['history']]}; load before "
          f"the restart {first.summary()}, after {second.summary()}")
    assert canary["status"] == "promoted" and canary["reason"] == "every stage passed"
    assert [h["why"] for h in canary["history"]][-3:] == [
        "stage 0 passed", "stage 1 passed", "every stage passed"]
    assert first.summary()["failed"] == 0 and second.summary()["failed"] == 0
    assert {body["variant"] for _, _, body in first.answers} == {"control", "canary"}
    registry = canaries.registry.registry()
    assert not registry.alias_exists(CHALLENGER)  # the promotion used the challenger up
    assert registry.alias_exists(PREVIOUS_CHAMPION)


def test_a_bad_challenger_is_rolled_back_at_the_first_stage_under_replayed_traffic(
        canaries: Canaries, tmp_path: Path) -> None:
    registry = canaries.registry.registry()
    if not registry.alias_exists(CHALLENGER):  # after the promotion above: the old champion
        registry.set_aliases(registry.resolve(PREVIOUS_CHAMPION), CHALLENGER)
    champion = registry.resolve(CHAMPION)
    with canaries.serving("bad", faults="challenger/ranker:error") as server:
        # The replay's 3000 requests come from 33 users, a few of them sending most: 20% of the
        # users drew under 100 of them in 0.5% of 4000 salts, 50% in none (measured), and a
        # challenger degrading every answer fails a sample of 100 at once
        started = admin(server, "/admin/canary", {"action": "start", "stages": [0.5, 1],
                                                  "guards": {**GUARDS, "min_requests": 100}})
        assert started.status_code == 200, started.text
        report_path = tmp_path / "replay.json"
        env = {**os.environ, **QUIET_ENV, **SYNTHETIC}
        log = tmp_path / "replay.log"
        with log.open("w") as out:  # a file, not a pipe: the progress bar would fill a pipe
            replay = subprocess.Popen(
                [sys.executable, "-m", "training", "replay", "--url", server.url, "--rate",
                 "150", "--count", "3000", "--report", str(report_path)],
                cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
            try:
                final = wait_for(lambda: canary_status(server)["canary"]["status"] != "running"
                                 and canary_status(server), 60, "the canary's end")
                rolled_at = time.monotonic()
                wait_for(lambda: all(httpx.post(f"{server.url}/recommend", timeout=10,
                                                json={"user_id": f"u{n}"}).json()["variant"]
                                     == "control" for n in range(30)),
                         10, "every user back on the champion")
                settled = time.monotonic() - rolled_at
                replay.wait(timeout=120)
            finally:
                replay.kill()
        output = log.read_text()
        verdict = final["verdicts"][-1] if final["verdicts"] else None

    canary = final["canary"]
    report = json.loads(report_path.read_text())
    print(f"\nbad challenger: {canary['status']} at stage {canary['stage']}: {canary['reason']}"
          f"; last verdict counts {verdict and verdict['counts']}; every user on the champion "
          f"{settled:.1f} s after; replay: {output.strip().splitlines()[-1]}")
    assert (canary["status"], canary["stage"]) == ("rolled_back", 0)
    assert canary["reason"].startswith("degraded rate")
    assert report["failed"] == 0 and report["sent"] == 3000
    assert set(report["requests"]) == {"control", "canary"}  # both variants served, then one
    assert canaries.registry.registry().resolve(CHAMPION) == champion  # nothing promoted
