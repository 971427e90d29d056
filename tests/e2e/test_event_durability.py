"""End to end: no accepted event is lost when Redis is killed and restarted under traffic.

The service runs on a durable Redis, as the main command's (devtools/local_redis.py,
`durable=True`: an append-only file, appendfsync everysec). A client sends events without
pause while Redis is SIGKILLed (no clean shutdown, no final save) and started again on the same
files. Every event answered 2xx must be in its user's history afterwards; every other answer is
a 503 with Retry-After (never a 5xx of another kind, never a dropped connection).
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis

from devtools.local_redis import LocalRedis, server_pid
from devtools.processes import bentoml_serve
from tests.support.fixtures_models import TrainedModels
from tests.support.http import popular_item, wait_for

pytestmark = pytest.mark.slow

HISTORY_PREFIX = "recsys:history:"  # recsys/stores/history.py
USERS = 20
MAX_EVENTS = 2000  # bounded traffic: the sender stops here or when told to
PACE_S = 0.005  # between events: a refusal is fast, the outage must not use up the budget
OUTAGE_S = 2.0


def test_events_accepted_around_a_redis_kill_are_all_kept(trained_models: TrainedModels,
                                                          tmp_path: Path) -> None:
    store = LocalRedis(tmp_path / "redis", durable=True).start()
    env = {**trained_models.env(), "RECSYS_REDIS_URL": store.url, "RECSYS_BREAKER_RESET_S": "1",
           # this test counts events, not list quality: the history cap must keep them all
           "RECSYS_HISTORY_MAX_EVENTS": str(MAX_EVENTS)}
    users = [f"durable-{uuid.uuid4().hex[:8]}-{i}" for i in range(USERS)]
    accepted: list[tuple[str, str]] = []
    answers: Counter[str] = Counter()
    stop = threading.Event()
    try:
        with bentoml_serve("service:Recommender", env, tmp_path / "serve.log") as server, \
                server.client() as client:
            item = popular_item(client)

            def send() -> None:
                for n in range(MAX_EVENTS):
                    if stop.is_set():
                        return
                    user = users[n % USERS]
                    try:
                        response = client.post("/events", json={
                            "user_id": user, "item_id": item, "type": "click",
                            "timestamp": 1_700_000_000 + n})
                    except httpx.TransportError as error:
                        answers[f"transport:{type(error).__name__}"] += 1
                        continue
                    if response.is_success:
                        accepted.append((user, str(1_700_000_000 + n)))
                        answers["2xx"] += 1
                    elif response.status_code == 503 and response.headers.get("retry-after"):
                        answers["503"] += 1
                    else:
                        answers[f"{response.status_code}"] += 1
                    time.sleep(PACE_S)

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            wait_for(lambda: answers["2xx"] >= 50, 30.0, "50 events accepted", interval_s=0.05)
            os.kill(server_pid(store.port) or 0, signal.SIGKILL)
            time.sleep(OUTAGE_S)
            store.stop()  # reap the killed process
            store.start()
            before = answers["2xx"]
            wait_for(lambda: answers["2xx"] >= before + 30 or not sender.is_alive(), 30.0,
                     "events accepted after the restart", interval_s=0.1)
            after = answers["2xx"] - before
            stop.set()
            sender.join(30.0)
        assert set(answers) <= {"2xx", "503"}, answers
        assert after >= 30, f"only {after} events accepted after the restart ({answers})"
        assert answers["503"] > 0, f"the outage refused nothing: {answers}"
        with redis.Redis.from_url(store.url) as kept:
            stored = {(user, str(int(json.loads(entry)["ts"])))
                      for user in users for entry in kept.lrange(HISTORY_PREFIX + user, 0, -1)}
        lost = [event for event in accepted if event not in stored]
        assert not lost, f"{len(lost)} of {len(accepted)} accepted events lost ({answers})"
    finally:
        stop.set()
        store.stop()
