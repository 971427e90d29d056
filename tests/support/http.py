"""Helpers for end-to-end tests over a real `bentoml serve` (devtools/processes.py starts it):
relaxed stage timeouts, error bodies, Prometheus samples, polling."""
from __future__ import annotations

import functools
import http.client
import socket
import time
from collections.abc import Callable
from typing import TypeVar

import httpx

from devtools.processes import KEEP_ALIVE_S
from serving.schemas import ErrorBody

# Stage timeouts for servers whose tests are about behaviour, not latency: the defaults (150 ms
# budget, 60 ms ranking) turn a busy 2-core CI machine's hiccups into degraded responses.
# test_service_faults keeps the defaults, because timeouts are what it tests.
RELAXED_LATENCY = {"RECSYS_BUDGET_MS": "2000", "RECSYS_TOWER_TIMEOUT_MS": "400",
                   "RECSYS_RETRIEVAL_TIMEOUT_MS": "500", "RECSYS_RANKING_TIMEOUT_MS": "1000",
                   "RECSYS_REDIS_TIMEOUT_MS": "500"}
T = TypeVar("T")
# Past uvicorn's default keep-alive timeout (5 s), well short of the one the service runs with.
IDLE_S = 6.0
assert IDLE_S < KEEP_ALIVE_S


def error_body(response: httpx.Response) -> ErrorBody:
    """The response's error body, held to the one documented shape."""
    assert response.headers["content-type"] == "application/json", response.headers
    return ErrorBody.model_validate_json(response.content)


def error_fields(response: httpx.Response) -> set[str]:
    """The request fields an error body names."""
    return {f.field for f in error_body(response).fields}


def error_text(response: httpx.Response) -> str:
    """The error message and every field message, joined (for `in` checks)."""
    body = error_body(response)
    return " | ".join([body.error, *(f"{f.field}: {f.message}" for f in body.fields)])


def metric_samples(text: str, prefix: str = "") -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} for the samples whose name starts with prefix."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and line.startswith(prefix):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def metric_delta(before: str, after: str) -> dict[str, float]:
    """Samples that changed between two scrapes, as increments (new series count from 0)."""
    old, new = metric_samples(before), metric_samples(after)
    return {key: value - old.get(key, 0.0) for key, value in new.items()
            if value != old.get(key, 0.0)}


def wait_for(condition: Callable[[], T], timeout_s: float, what: str,
             interval_s: float = 0.2) -> T:
    """Poll `condition()` until it returns something truthy; AssertionError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"{what} not met within {timeout_s} s (last: {last!r})")


@functools.cache
def popular_item(client: httpx.Client) -> str:
    """The first item a user without history is shown: the popular items, no model involved
    (so it answers under any model fault). Sent as a request's recent item, it makes the models
    answer, as they do for anyone with history."""
    response = client.post("/recommend", json={"user_id": "newcomer-for-an-item", "k": 1})
    assert response.status_code == 200, response.text
    return str(response.json()["items"][0]["item_id"])


def idle_connection_still_answers(host: str, port: int, idle_s: float = IDLE_S,
                                  path: str = "/livez") -> bool:
    """GET `path` on one keep-alive connection, leave it idle `idle_s`, then GET it again on
    the same connection: whether the server still held it open and answered 200."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", path)
        first = connection.getresponse()
        first.read()
        assert first.status == 200 and not first.will_close, (first.status, first.headers)
        sock = connection.sock
        time.sleep(idle_s)
        sock.setblocking(False)
        try:  # b"" (end of stream): the server closed it while it was idle
            if sock.recv(1, socket.MSG_PEEK) == b"":
                return False
        except BlockingIOError:
            pass  # nothing to read, still open
        sock.settimeout(10)
        connection.request("GET", path)
        second = connection.getresponse()
        second.read()
        return second.status == 200 and connection.sock is sock
    finally:
        connection.close()
