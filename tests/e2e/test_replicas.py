"""End to end: two `bentoml serve` replicas (one API worker each) sharing one Redis and following
one MLflow tracking server, behind HAProxy (devtools/replicas.py), all on 127.0.0.1.

- An event recorded through one replica reaches the user's cached list on the other at once,
  the list that replica holds in memory included (the bump is published, recsys/stores/
  invalidation.py).
- A replica killed (SIGKILL) under a bounded load loses no /recommend request at the load
  balancer (only an answer the replica was writing when it died can be cut), HAProxy marks it
  down, events are never recorded twice, and it comes back.
- A promotion in the registry converges on every replica without a failed request.
"""
from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis

from devtools.haproxy import HaproxyError, find_haproxy
from devtools.local_redis import LocalRedis
from devtools.replicas import ReplicaSet
from registry import CHALLENGER, CHAMPION
from tests.support.fixtures_models import TrainedModels
from tests.support.http import RELAXED_LATENCY, wait_for
from tests.support.load import Load
from tests.support.registry_server import RegistryServer, registry_copy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPLICAS = 2
POLL_S = 1.0  # registry polls of every replica
# An invalidation message crosses loopback in well under a second; without it another
# replica's list would stay in its L1 for min(RECSYS_RESULT_TTL_S, 30) s.
INVALIDATION_S = 2.0
SWITCH_WINDOW_S = 20.0  # a poll, then fetch, verify, load, warm and prefill
STATE_CHANGE_S = 10.0  # HAProxy checks every 0.5 s, fall 2, rise 2
KILL_AFTER_S = 3.0  # of load before the kill
HAPROXY_LINE = re.compile(r" replicas/\S+ \S+ (?P<status>\d+) \d+ \S+ \S+ (?P<state>\S{4}) "
                          r'[^"\n]*"(?P<request>[^"\n]*)"')
LOAD_AFTER_KILL_S = 4.0


@dataclass(frozen=True)
class Live:
    replicas: ReplicaSet
    registry: RegistryServer
    tags: dict[str, dict[str, str]]  # alias -> kind -> version, as trained


@pytest.fixture(scope="module")
def live(trained_models: TrainedModels, redis_server: LocalRedis,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    try:
        find_haproxy()
    except HaproxyError as error:
        pytest.skip(str(error))
    root = tmp_path_factory.mktemp("replicas")
    redis_server.start()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    with registry_copy(trained_models, root / "registry") as registry:
        env = {**trained_models.env(), **RELAXED_LATENCY, "RECSYS_MODEL_SOURCE": "registry",
               "RECSYS_REGISTRY_URI": registry.url, "RECSYS_REGISTRY_POLL_S": str(POLL_S),
               "RECSYS_WARM_USERS": "20"}
        tags = {alias: trained_models.refs(alias).versions for alias in (CHAMPION, CHALLENGER)}
        with ReplicaSet(REPLICAS, env, root, redis_url=redis_server.url,
                        ready_timeout_s=180) as replicas:
            yield Live(replicas, registry, tags)


def recommend(url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{url}/recommend", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


def item_ids(answer: dict[str, Any]) -> list[str]:
    return [item["item_id"] for item in answer["items"]]


def record(url: str, user: str, item: str) -> None:
    response = httpx.post(f"{url}/events", json={"user_id": user, "item_id": item,
                                                  "type": "click"}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["cache_invalidated"] is True


def test_an_event_through_one_replica_reaches_the_users_list_on_every_replica(
        live: Live) -> None:
    a, b = live.replicas.replicas
    user, body = "u11", {"user_id": "u11", "k": 10, "context": {"hour": 3, "device": "tv"}}
    computed = recommend(a.url, body)
    time.sleep(0.3)  # the L2 write goes out after the answer
    shared = recommend(b.url, body)
    held = recommend(b.url, body)
    assert (computed["cache"], shared["cache"], held["cache"]) == ("miss", "l2", "l1")
    clicked = item_ids(held)[0]

    record(a.url, user, clicked)
    recorded_at = time.monotonic()
    assert clicked not in item_ids(recommend(a.url, body))  # the recording replica: at once
    stale = []

    def fresh_on_b() -> bool:
        answer = recommend(b.url, body)
        if clicked in item_ids(answer):
            stale.append(answer["cache"])
            return False
        return True

    wait_for(fresh_on_b, INVALIDATION_S, "the other replica's list without the clicked item",
             interval_s=0.05)
    window = time.monotonic() - recorded_at
    print(f"\nreplica b dropped its in-memory list {window:.2f} s after the event on a "
          f"({len(stale)} stale answers, levels {Counter(stale)})")
    assert set(stale) <= {"l1"}  # only memory was ever stale: Redis knew at once

    # And the other way round, for a list the recording replica holds in memory.
    wait_for(lambda: recommend(a.url, body)["cache"] == "l1", 5, "the list in a's memory")
    second = item_ids(recommend(b.url, body))[0]
    record(b.url, user, second)
    wait_for(lambda: second not in item_ids(recommend(a.url, body)), INVALIDATION_S,
             "the first replica's list without the second click", interval_s=0.05)



def recommend_endings(log: str) -> list[tuple[int, str]]:
    """(status, termination state) of the /recommend requests HAProxy logged: with
    `option dontlog-normal`, those that were retried, redispatched or ended in an error."""
    return [(int(m["status"]), m["state"][:2]) for m in HAPROXY_LINE.finditer(log)
            if m["request"].startswith("POST /recommend")]


@dataclass
class Events:
    """POST /events through the load balancer from one thread, for one user, at most `limit`."""

    url: str
    user: str
    item: str
    limit: int = 150  # below RECSYS_HISTORY_MAX_EVENTS (200): every recorded event is kept
    statuses: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.stop.is_set() and len(self.statuses) < self.limit:
                try:
                    self.statuses.append(client.post("/events", json={
                        "user_id": self.user, "item_id": self.item}).status_code)
                except httpx.HTTPError:
                    self.statuses.append(0)  # closed without an answer
                time.sleep(0.03)


@pytest.fixture
def restarts_r2(live: Live) -> Iterator[None]:
    """Whatever the test does to replica r2, the next test finds it running."""
    yield
    if live.replicas.replica("r2").process is None:
        live.replicas.restart("r2")


@pytest.mark.usefixtures("restarts_r2")
def test_killing_a_replica_under_load_loses_no_request_at_the_load_balancer(
        live: Live, redis_server: LocalRedis) -> None:
    replicas, balancer = live.replicas, live.replicas.balancer
    wait_for(lambda: set(balancer.server_states().values()) == {"UP"}, STATE_CHANGE_S,
             "every replica up")
    item = str(recommend(replicas.url, {"user_id": "newcomer", "k": 1})["items"][0]["item_id"])
    events = Events(replicas.url, "events-under-kill", item)
    thread = threading.Thread(target=events.run)
    served_before = balancer.counters("r2")["stot"]
    with Load(replicas.url, threads=4) as load:
        thread.start()
        time.sleep(KILL_AFTER_S)
        in_flight = balancer.counters("r2")["scur"]
        replicas.kill("r2")
        killed_at = time.monotonic()
        wait_for(lambda: balancer.server_states()["r2"].startswith("DOWN"), STATE_CHANGE_S,
                 "HAProxy marking the killed replica down")
        marked_down_s = time.monotonic() - killed_at
        time.sleep(LOAD_AFTER_KILL_S)
        events.stop.set()
        thread.join()
    summary, counters = load.summary(), balancer.counters()
    with redis.Redis.from_url(redis_server.url) as client:
        recorded = int(client.llen(f"recsys:history:{events.user}"))
    answered = events.statuses.count(200)
    ended = recommend_endings(balancer.process.log_path.read_text())
    print(f"\nkill under load: {summary}; r2 had {in_flight} in flight and was marked down "
          f"{marked_down_s:.1f} s after the kill; HAProxy retries {counters['wretr']}, "
          f"redispatches {counters['wredis']}; /recommend answers HAProxy logged as not normal "
          f"{ended}; events {Counter(events.statuses)}, {recorded} recorded")

    assert balancer.counters("r2")["stot"] > served_before  # it was taking traffic
    assert summary["sent"] > 100
    assert not [e for e in ended if e[0] >= 500]  # HAProxy gave up on none: no 502, 503, 504
    # A client saw a failure only for an answer the replica had begun to send when it died
    # (HAProxy had passed the status line on, termination state SD): no load balancer retries
    # that, and a replica writes its headers and its body in two writes.
    assert summary["failed"] == ended.count((200, "SD")), (summary, ended)
    # An event is replayed only when no replica read it: never recorded twice.
    assert answered <= recorded <= len(events.statuses)

    replicas.restart("r2")
    wait_for(lambda: balancer.server_states()["r2"] == "UP", STATE_CHANGE_S,
             "the restarted replica back in rotation")


def versions_served(load: Load) -> list[dict[str, str]]:
    return [body["model_versions"] for _, status, body in load.answers if status == 200]


def test_a_promotion_converges_on_every_replica_without_a_failed_request(live: Live) -> None:
    replicas = live.replicas
    wait_for(lambda: set(replicas.balancer.server_states().values()) == {"UP"}, STATE_CHANGE_S,
             "every replica up")
    old, new = live.tags[CHAMPION], live.tags[CHALLENGER]
    probe = {"user_id": "u3", "k": 3}
    assert all(recommend(r.url, probe)["model_versions"] == old for r in replicas.replicas)
    converged: dict[str, float] = {}
    with Load(replicas.url) as load:
        time.sleep(2)
        promoted_at = time.monotonic()
        live.registry.registry().promote(CHALLENGER)

        def every_replica_serves_new() -> bool:
            for replica in replicas.replicas:
                if replica.name not in converged and \
                        recommend(replica.url, probe)["model_versions"] == new:
                    converged[replica.name] = round(time.monotonic() - promoted_at, 1)
            return len(converged) == REPLICAS

        wait_for(every_replica_serves_new, SWITCH_WINDOW_S * 2, "every replica on the new set",
                 interval_s=0.3)
        time.sleep(2)  # and traffic after it
    summary = load.summary()
    served = versions_served(load)
    print(f"\npromotion across {REPLICAS} replicas under load: {summary}; each replica served "
          f"the new set this many seconds after the alias moved: {converged}")

    assert summary["failed"] == 0, summary
    assert max(converged.values()) < SWITCH_WINDOW_S
    assert {frozenset(v.items()) for v in served} <= {frozenset(old.items()),
                                                     frozenset(new.items())}
    assert served[-20:] == [new] * 20
