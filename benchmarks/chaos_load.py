"""A bounded, paced load of /recommend, /events, /similar_items and /rank from Zipf-distributed
users against 127.0.0.1, every answer kept with its time (the chaos suite and the soak).

`concurrency` asyncio workers in a thread of their own, each sending one request at a time at no
more than `rate / concurrency` a second (a closed loop with a pace: a slow server gets fewer
requests, never a growing queue in the client). Every event carries a timestamp of its own, so
the suite can look for each accepted event in the user's history afterwards.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from training.replay import KEEPALIVE_EXPIRY_S

ENDPOINTS = ("/recommend", "/events", "/similar_items", "/rank")
DEFAULT_MIX = (0.6, 0.2, 0.1, 0.1)  # shares of ENDPOINTS
EVENT_TYPES = ("click", "view")
RANK_ITEMS = 20
EVENT_TS_BASE = 1_600_000_000  # event timestamps: base + sequence number, unique in a run


@dataclass(frozen=True)
class Sample:
    """One request. status: the HTTP status, or 0 with `error` naming the transport failure."""

    start: float  # time.monotonic() when sent
    end: float
    endpoint: str
    status: int
    error: str = ""  # the transport error's type, or the body of an error answer
    reasons: tuple[str, ...] = ()  # degraded_reasons of a 2xx answer
    retry_after: bool = False  # a Retry-After header came with it
    user: str = ""
    event_ts: int = 0  # /events: the timestamp it carried
    versions: tuple[str, ...] = ()  # the model tags a 2xx answer names (versions_key)

    @property
    def latency_ms(self) -> float:
        return (self.end - self.start) * 1000

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def refused(self) -> bool:
        """An event the store could not take, answered as designed: 503 with Retry-After."""
        return self.endpoint == "/events" and self.status == 503 and self.retry_after

    @property
    def failed(self) -> bool:
        return not self.ok and not self.refused

    @property
    def degraded(self) -> bool:
        return bool(self.reasons)


@dataclass(frozen=True)
class LoadShape:
    concurrency: int = 8
    rate: float = 80.0  # requests per second at most, all workers together
    zipf_s: float = 1.0
    mix: tuple[float, ...] = DEFAULT_MIX
    timeout_s: float = 15.0  # past the service's own 504 (RECSYS_REQUEST_TIMEOUT_S, 10 s)
    new_users: float = 0.0  # share of requests from a user id never seen before
    k: int = 10
    seed: int = 1


def versions_key(model_versions: Mapping[str, str]) -> tuple[str, ...]:
    """An answer's `model_versions` (kind -> model tag) as the tags in kind order: what a
    promotion or a rollback changes."""
    return tuple(model_versions[kind] for kind in sorted(model_versions))


class ZipfUsers:
    """User ids drawn with P(rank r) proportional to 1 / r^s over `users` in the given order."""

    def __init__(self, users: Sequence[str], s: float, rng: np.random.Generator) -> None:
        weights = 1.0 / np.arange(1, len(users) + 1) ** s
        self.cdf = np.cumsum(weights / weights.sum())
        self.users, self.rng = list(users), rng

    def draw(self) -> str:
        return self.users[min(int(np.searchsorted(self.cdf, self.rng.random())),
                              len(self.users) - 1)]


@dataclass
class MixedLoad:
    """Start, let it run while faults come and go, stop; `samples` holds every answer."""

    url: str
    users: Sequence[str]
    items: Sequence[str]
    shape: LoadShape = field(default_factory=LoadShape)
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _sequence: int = 0
    _new: int = 0
    _versions: dict[tuple[str, ...], tuple[str, ...]] = field(default_factory=dict)  # one each

    def start(self) -> MixedLoad:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()),
                                        name="chaos-load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.shape.timeout_s + 10)
        return self.samples

    async def _run(self) -> None:
        rng = np.random.default_rng(self.shape.seed)
        zipf = ZipfUsers(self.users, self.shape.zipf_s, rng)
        limits = httpx.Limits(max_connections=self.shape.concurrency,
                              max_keepalive_connections=self.shape.concurrency,
                              keepalive_expiry=KEEPALIVE_EXPIRY_S)  # see training/replay.py
        async with httpx.AsyncClient(base_url=self.url, timeout=self.shape.timeout_s,
                                     limits=limits) as client:
            await asyncio.gather(*(self._worker(client, zipf, rng, n)
                                   for n in range(self.shape.concurrency)))

    async def _worker(self, client: httpx.AsyncClient, zipf: ZipfUsers,
                      rng: np.random.Generator, n: int) -> None:
        interval = self.shape.concurrency / self.shape.rate
        await asyncio.sleep(interval * n / self.shape.concurrency)  # spread the workers out
        mix = np.asarray(self.shape.mix) / sum(self.shape.mix)
        while not self._stop.is_set():
            began = time.monotonic()
            endpoint = ENDPOINTS[int(rng.choice(len(ENDPOINTS), p=mix))]
            user = zipf.draw() if rng.random() >= self.shape.new_users else self._new_user()
            self.samples.append(await self._send(client, endpoint, user, rng))
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - began)))

    def _new_user(self) -> str:
        self._new += 1
        return f"new-{self.shape.seed}-{self._new}"

    def _body(self, endpoint: str, user: str, rng: np.random.Generator) -> tuple[dict[str, Any], int]:
        item = self.items[int(rng.integers(len(self.items)))]
        if endpoint == "/recommend":
            return {"user_id": user, "k": self.shape.k}, 0
        if endpoint == "/similar_items":
            return {"item_id": item, "k": self.shape.k}, 0
        if endpoint == "/rank":
            picks = rng.choice(len(self.items), size=RANK_ITEMS, replace=False)
            return {"user_id": user, "item_ids": [self.items[int(i)] for i in picks]}, 0
        self._sequence += 1  # one event loop: no race
        ts = EVENT_TS_BASE + self._sequence
        return {"user_id": user, "item_id": item, "type": EVENT_TYPES[self._sequence % 2],
                "timestamp": ts}, ts

    async def _send(self, client: httpx.AsyncClient, endpoint: str, user: str,
                    rng: np.random.Generator) -> Sample:
        body, ts = self._body(endpoint, user, rng)
        start = time.monotonic()
        try:
            response = await client.post(endpoint, json=body)
        except httpx.HTTPError as error:
            return Sample(start, time.monotonic(), endpoint, 0, type(error).__name__,
                          user=user, event_ts=ts)
        end = time.monotonic()
        if not response.is_success:
            return Sample(start, end, endpoint, response.status_code, response.text[:200],
                          retry_after="retry-after" in response.headers, user=user, event_ts=ts)
        answer = response.json()
        reasons: tuple[str, ...] = tuple(answer.get("degraded_reasons") or ())
        if endpoint == "/events" and not answer.get("cache_invalidated", True):
            reasons = ("cache_not_invalidated",)  # other workers may serve a stale list a while
        versions = versions_key(answer.get("model_versions") or {})
        return Sample(start, end, endpoint, response.status_code, "", reasons,
                      "retry-after" in response.headers, user, ts,
                      self._versions.setdefault(versions, versions))
