"""The load balancer's configuration and its retry rules, against stand-in replicas that crash
mid-request on chosen paths (tests/support/crashing_backend.py): a read-only request is replayed
on another replica, an event never is; a dead replica is marked down and comes back."""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devtools.haproxy import (
    Backend,
    BalancerConfig,
    HaproxyError,
    LoadBalancer,
    check_config,
    find_haproxy,
    render,
)
from devtools.processes import ServerProcess
from tests.support.http import wait_for

STATE_CHANGE_S = 5.0  # checks every 0.5 s (0.25 s while changing), fall 2, rise 2


@pytest.fixture(scope="module")
def haproxy() -> str:
    try:
        return find_haproxy(install=os.geteuid() == 0)
    except HaproxyError as error:
        pytest.skip(str(error))


def stand_in(name: str, crash_on: tuple[str, ...], log: Path) -> ServerProcess:
    command = [sys.executable, "-m", "tests.support.crashing_backend", "--port", "{port}",
               "--name", name, "--crash-on", *crash_on]
    return ServerProcess(name, command, {}, log, ready_timeout_s=30)


@dataclass
class Pair:
    """HAProxy over `crashing` (dies mid-request on /recommend and /events) and `healthy`."""

    balancer: LoadBalancer
    crashing: ServerProcess
    healthy: ServerProcess

    def received(self, server: ServerProcess) -> dict[str, int]:
        return dict(httpx.get(f"{server.url}/received", timeout=5).json())


@pytest.fixture(params=["leastconn", "user"])
def pair(haproxy: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Pair]:
    crashing = stand_in("crashing", ("/recommend", "/events"), tmp_path / "crashing.log")
    healthy = stand_in("healthy", (), tmp_path / "healthy.log")
    with crashing, healthy:
        config = BalancerConfig((Backend("crashing", crashing.port),
                                 Backend("healthy", healthy.port)), tmp_path / "admin.sock",
                                balance=request.param)
        with LoadBalancer(config, tmp_path / "haproxy", executable=haproxy) as balancer:
            yield Pair(balancer, crashing, healthy)


def post(client: httpx.Client, path: str, body: bytes = b"{}") -> int:
    """The status, or 0 when HAProxy closed the connection without an answer."""
    try:
        return client.post(path, content=body,
                           headers={"content-type": "application/json"}).status_code
    except httpx.RemoteProtocolError:
        return 0


@pytest.mark.parametrize("balance", ["user", "leastconn"])
def test_the_rendered_configuration_is_what_haproxy_accepts(haproxy: str, tmp_path: Path,
                                                            balance: str) -> None:
    config = BalancerConfig((Backend("r1", 8001), Backend("r2", 8002)), tmp_path / "admin.sock",
                            port=9000, stats_port=9001, balance=balance)  # type: ignore[arg-type]
    text = render(config)
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)

    check_config(haproxy, path)
    assert "server r1 127.0.0.1:8001" in text and "server r2 127.0.0.1:8002" in text
    assert ("json_query('$.user_id')" in text) == (balance == "user")
    assert "option httpchk GET /readyz" in text and "http-check expect status 200" in text
    assert "acl read_only path /recommend /similar_items /rank /info" in text
    assert "http-request disable-l7-retry unless read_only" in text
    assert not re.search(r"\$\{?[a-z_]", text)  # every template name was filled in


def test_a_configuration_haproxy_refuses_is_reported_with_its_words(haproxy: str,
                                                                     tmp_path: Path) -> None:
    path = tmp_path / "haproxy.cfg"
    path.write_text("backend replicas\n    balance no-such-algorithm\n")

    with pytest.raises(HaproxyError, match=r"haproxy.cfg:2\] : balance only supports"):
        check_config(haproxy, path)


@pytest.mark.parametrize("change", [{"servers": ()}, {"fall": 0}, {"retries": -1},
                                    {"servers": (Backend("r1", 1), Backend("r1", 2))},
                                    {"servers": (Backend("r 1", 1),)},
                                    {"read_only_paths": ("recommend",)},
                                    {"balance": "random"}, {"hash_balance_factor": 100}])
def test_bad_settings_are_refused_with_their_name(change: dict[str, object],
                                                  tmp_path: Path) -> None:
    arguments: dict[str, object] = {"servers": (Backend("r1", 8001),),
                                    "stats_socket": tmp_path / "s", **change}
    with pytest.raises(ValueError, match=next(iter(change))):
        BalancerConfig(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize("keep_alive", [True, False])
def test_a_read_only_request_is_replayed_on_another_replica(pair: Pair, keep_alive: bool) -> None:
    headers = {} if keep_alive else {"Connection": "close"}
    big = b'{"item_ids": ["' + b"i" * 40_000 + b'"]}'  # replayed too: it fits in the buffer
    users = [f'{{"user_id": "u{n}"}}'.encode() for n in range(8)]  # hashed: some to `crashing`
    with httpx.Client(base_url=pair.balancer.url, timeout=10, headers=headers) as client:
        statuses = [post(client, "/recommend", body) for body in users]
        statuses += [post(client, "/recommend") for _ in range(8)]  # no user: round robin
        statuses.append(post(client, "/recommend", big))

    assert statuses == [200] * 17
    crashed = pair.received(pair.crashing).get("/recommend", 0)
    assert crashed >= 2  # some did reach the replica that died under them
    assert pair.received(pair.healthy)["/recommend"] == 17
    assert pair.balancer.counters()["wredis"] >= crashed


@pytest.mark.parametrize("keep_alive", [True, False])
def test_an_event_is_never_replayed_once_a_replica_read_it(pair: Pair, keep_alive: bool) -> None:
    headers = {} if keep_alive else {"Connection": "close"}
    with httpx.Client(base_url=pair.balancer.url, timeout=10, headers=headers) as client:
        statuses = [post(client, "/events") for _ in range(8)]

    lost = [s for s in statuses if s != 200]
    assert set(lost) <= {502, 0}  # a 502, or the client connection closed without an answer
    assert len(lost) == pair.received(pair.crashing)["/events"] >= 1  # none went on elsewhere
    assert statuses.count(200) == pair.received(pair.healthy)["/events"]


def test_a_dead_replica_is_marked_down_its_events_go_elsewhere_and_it_comes_back(
        pair: Pair) -> None:
    states = pair.balancer.server_states
    wait_for(lambda: states() == {"crashing": "UP", "healthy": "UP"}, STATE_CHANGE_S, "both up")
    pair.crashing.stop()

    with httpx.Client(base_url=pair.balancer.url, timeout=10) as client:
        statuses = [post(client, "/events") for _ in range(6)]  # refused: retried elsewhere
    wait_for(lambda: states()["crashing"].startswith("DOWN"), STATE_CHANGE_S, "marked down")
    assert statuses == [200] * 6
    assert pair.received(pair.healthy)["/events"] == 6

    pair.crashing.start()
    wait_for(lambda: states()["crashing"] == "UP", STATE_CHANGE_S, "back up")
    assert "haproxy_backend_active_servers" in pair.balancer.metrics()


def test_balanced_by_user_a_users_requests_meet_one_replica_and_others_are_spread(
        haproxy: str, tmp_path: Path) -> None:
    names = ("r1", "r2", "r3")
    servers = [stand_in(name, (), tmp_path / f"{name}.log") for name in names]
    for server in servers:
        server.launch()
    try:
        for server in servers:
            server.wait_ready()
        config = BalancerConfig(tuple(Backend(n, s.port) for n, s in zip(names, servers)),
                                tmp_path / "admin.sock", balance="user")
        with LoadBalancer(config, tmp_path / "haproxy", executable=haproxy) as balancer, \
                httpx.Client(base_url=balancer.url, timeout=10) as client:
            def replica(path: str, body: dict[str, str]) -> str:
                return client.post(path, json=body).headers["x-recsys-replica"]

            users = [f"u{n}" for n in range(40)]
            first = {u: replica("/recommend", {"user_id": u}) for u in users}
            again = {u: replica("/events", {"user_id": u, "item_id": "i1"}) for u in users}
            spread = {replica("/similar_items", {"item_id": f"i{n}"}) for n in range(9)}
    finally:
        for server in servers:
            server.stop()

    assert again == first
    assert set(first.values()) == set(names)  # 40 users land on every replica
    assert spread == set(names)  # no user_id: round robin


def test_the_replicas_see_the_clients_address_and_not_one_it_made_up(pair: Pair) -> None:
    response = httpx.post(f"{pair.balancer.url}/similar_items", json={"item_id": "i1"},
                          headers={"X-Forwarded-For": "203.0.113.9"}, timeout=10)

    assert response.json()["forwarded_for"] == ["127.0.0.1"]
