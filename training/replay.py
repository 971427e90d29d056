"""Replay held-out interactions as live traffic against a running service, so that a shadow
comparison and a canary can be reproduced from data: for each held-out (user, item), in time
order, ask POST /recommend for the user, then POST /events the item as a "click" when the
service recommended it, else as a "view" (the user found it elsewhere). The service then writes
its shadow log and counts each variant's click-through as it would on real traffic.

Held out: the latest RECSYS_REPLAY_HOLDOUT share of the interactions, which training keeps out
of the models and out of the user histories they serve (a service recommends no item a user
has seen, so an event it already knows could never be clicked). `count` beyond them replays
them again (the users' histories then hold the first pass, as they would live).

Traffic goes to 127.0.0.1 only, at a bounded rate and count.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

import httpx
import pandas as pd
from tqdm.auto import tqdm

from recsys.errors import DataError
from training.data.order import time_ordered
from training.data.schema import ITEM_ID, USER_ID

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_RATE = 2000.0  # requests a second
MAX_COUNT = 1_000_000
# An idle connection is dropped by this client before the server would close it. The project's
# servers hold idle connections 75 s (devtools/processes.py KEEP_ALIVE_S), but a plain `bentoml
# serve` closes one after 5 s, httpx's default expiry too, and a request sent on a connection the
# server is closing at that moment is reset (a ReadError: 1 of 3,000 requests in a test run on 2
# loaded cores). The replay may target any server, so it does not rely on the server's timeout.
KEEPALIVE_EXPIRY_S = 2.0


@dataclass(frozen=True)
class Interaction:
    user_id: str
    item_id: str


@dataclass
class ReplayReport:
    """What a replay sent and how it was answered; per variant: requests and clicks."""

    sent: int = 0
    failed: int = 0
    degraded: int = 0
    events_failed: int = 0
    seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)  # by variant
    clicks: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)  # ranker tag -> responses

    @property
    def ctr(self) -> dict[str, float]:
        return {v: self.clicks.get(v, 0) / n for v, n in self.requests.items() if n}

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "ctr": self.ctr}

    def summary(self) -> str:
        by_variant = ", ".join(f"{v}: {self.clicks.get(v, 0)}/{n} clicked "
                               f"({self.ctr.get(v, 0.0):.2%})"
                               for v, n in sorted(self.requests.items()))
        return (f"sent {self.sent} in {self.seconds:.1f} s: {self.failed} failed, "
                f"{self.degraded} degraded, {self.events_failed} events failed; {by_variant}")


def replay_cut(interactions: pd.DataFrame, share: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the earlier interactions, the latest `share` of them), both in the one time order
    (training/data/order.py): the same cut whatever the input's row order."""
    ordered = time_ordered(interactions, per_user=False).reset_index(drop=True)
    cut = len(ordered) - round(len(ordered) * share)
    return ordered.iloc[:cut].reset_index(drop=True), ordered.iloc[cut:].reset_index(drop=True)


def held_out(interactions: pd.DataFrame, share: float) -> list[Interaction]:
    """The interactions a replay sends: the latest `share`, in time order."""
    if share <= 0:
        raise DataError("nothing is held out to replay: train the models with "
                        "RECSYS_REPLAY_HOLDOUT (e.g. 0.1) and replay with the same setting; every "
                        "event of the data is in the served user histories otherwise, and a "
                        "service never recommends an item the user has seen")
    _, events = replay_cut(interactions, share)
    if events.empty:
        raise DataError(f"RECSYS_REPLAY_HOLDOUT={share} holds out no interaction of "
                        f"{len(interactions)}")
    return [Interaction(str(u), str(i)) for u, i in zip(events[USER_ID], events[ITEM_ID])]


def check_loopback(url: str) -> str:
    host = urlsplit(url).hostname or ""
    if host not in LOOPBACK:
        raise ValueError(f"replay sends traffic to 127.0.0.1 only, got {url!r}")
    return url.rstrip("/")


async def replay(url: str, interactions: list[Interaction], *, rate: float, count: int,
                 k: int = 10, concurrency: int = 32, timeout_s: float = 10.0,
                 on_answer: Callable[[dict[str, object]], None] | None = None,
                 stop: Callable[[], bool] | None = None, progress: bool = True) -> ReplayReport:
    """Send `count` replayed interactions at `rate` a second at most (fewer when `stop()` turns
    true first); `on_answer` sees every /recommend answer."""
    url = check_loopback(url)
    if not 0 < rate <= MAX_RATE or not 0 < count <= MAX_COUNT:
        raise ValueError(f"rate must be in (0, {MAX_RATE:g}] and count in (0, {MAX_COUNT}], "
                         f"got {rate} and {count}")
    report, statuses = ReplayReport(), Counter[str]()
    requests, clicks, versions = Counter[str](), Counter[str](), Counter[str]()
    slots = asyncio.Semaphore(concurrency)
    bar = tqdm(total=count, desc="replay", unit="req", disable=not progress)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency,
                          keepalive_expiry=KEEPALIVE_EXPIRY_S)

    async def one(client: httpx.AsyncClient, step: Interaction) -> None:
        try:
            answer = await client.post("/recommend", json={"user_id": step.user_id, "k": k})
        except httpx.HTTPError as error:
            statuses[type(error).__name__] += 1
            report.failed += 1
            return
        statuses[str(answer.status_code)] += 1
        if answer.status_code != 200:
            report.failed += 1
            return
        body = answer.json()
        if on_answer is not None:
            on_answer(body)
        variant = str(body["variant"])
        requests[variant] += 1
        report.degraded += bool(body["degraded"])
        versions[str(body["model_versions"].get("ranker"))] += 1
        shown = {item["item_id"] for item in body["items"]}
        kind = "click" if step.item_id in shown else "view"
        clicks[variant] += kind == "click"
        try:
            event = await client.post("/events", json={"user_id": step.user_id,
                                                        "item_id": step.item_id, "type": kind})
            report.events_failed += event.status_code != 200
        except httpx.HTTPError:
            report.events_failed += 1

    async def paced(client: httpx.AsyncClient, step: Interaction) -> None:
        try:
            await one(client, step)
        finally:
            slots.release()
            bar.update()

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        tasks = set()
        for n, step in enumerate(itertools.islice(cycled(interactions), count)):
            if stop is not None and stop():
                break
            delay = started + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            task = asyncio.create_task(paced(client, step))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            report.sent += 1
        await asyncio.gather(*tasks)
    bar.close()
    report.seconds = round(time.perf_counter() - started, 2)
    report.statuses, report.requests = dict(statuses), dict(requests)
    report.clicks, report.versions = dict(clicks), dict(versions)
    return report


def cycled(interactions: list[Interaction]) -> Iterator[Interaction]:
    if not interactions:
        raise DataError("no interactions to replay")
    return itertools.cycle(interactions)


def write_report(report: ReplayReport, path: str) -> None:
    with open(path, "w", encoding="utf-8") as out:
        json.dump(report.to_json(), out, indent=2)
