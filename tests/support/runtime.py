"""Runtime test support: a runtime built as service.py builds it, requests answered as the
service answers them (RecommendPipeline.respond, then the ResponseEncoder), and the telemetry
they report."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import redis

from recsys.app.assembly import build_runtime
from recsys.app.models_file import ModelRefs
from recsys.app.runtime import Runtime
from recsys.models.bundles import EmbeddingBundle
from recsys.pipeline.request import RecommendRequest
from recsys.pipeline.towers import LocalUserTower
from recsys.settings import ServingSettings
from recsys.telemetry import Telemetry
from serving.fault_injection import fault_plan
from serving.responses import ResponseEncoder
from serving.schemas import RecommendResponse

T = TypeVar("T")
K = 10
USER = "u1"  # a user known at training time, with a history
SOURCES = {"ann", "popular", "item2item"}
RESULT_KEYS = "recsys:results:*"


class Recorder(Telemetry):
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, str]]] = []

    def event(self, name: str, **labels: str) -> None:
        self.events.append((name, labels))

    def named(self, name: str) -> list[dict[str, str]]:
        return [labels for n, labels in self.events if n == name]


class SlowTower:
    """A user tower that answers `delay_s` late (a challenger slower than any budget)."""

    def __init__(self, inner: LocalUserTower, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s

    async def encode(self, history: np.ndarray, attributes: np.ndarray) -> np.ndarray:
        await asyncio.sleep(self.delay_s)
        return await self.inner.encode(history, attributes)


def settings(redis_url: str | None, **overrides: Any) -> ServingSettings:
    """Generous timeouts: these tests are about behaviour on a shared 2-core machine. Every user
    with history is ranked ("rank_all"): the policy the tiny test models chose on validation
    varies with them, and these tests are about the ranker and its fallbacks; the trained
    policy's paths have tests of their own."""
    values: dict[str, Any] = {
        "ranking_policy": "rank_all",
        "redis_url": redis_url, "redis_timeout_ms": 500.0, "budget_ms": 5000.0,
        "tower_timeout_ms": 1000.0, "retrieval_timeout_ms": 2000.0, "ranking_timeout_ms": 2000.0,
        "ann_candidates": 300,
        "popular_candidates": 50, "ranked_candidates": 300, "breaker_reset_s": 60.0}
    values.update(overrides)
    return ServingSettings(**values)


def serve(config: ServingSettings, refs: list[ModelRefs],
          scenario: Callable[[Runtime], Awaitable[T]], telemetry: Telemetry | None = None,
          **build: Any) -> T:
    """Runs `scenario` on a runtime built as service.py builds it (RECSYS_FAULTS included)."""
    async def main() -> T:
        runtime = build_runtime(config, refs, telemetry or Recorder(),
                                wrap=fault_plan(config.faults), **build)
        try:
            return await scenario(runtime)
        finally:
            await runtime.aclose()
    return asyncio.run(main())


ENCODER = ResponseEncoder()


async def recommend(runtime: Runtime, user: str = USER, k: int = K,
                    **fields: Any) -> dict[str, Any]:
    answer = await runtime.pipeline.respond(RecommendRequest(user, k, **fields))
    body = ENCODER.encode(answer)
    # every answer, degraded ones included, holds to the documented HTTP contract
    RecommendResponse.model_validate_json(body)
    return json.loads(body)


def ids(result: dict[str, Any]) -> list[str]:
    return [item["item_id"] for item in result["items"]]


def cached_results(redis_url: str) -> list[bytes]:
    with redis.Redis.from_url(redis_url) as client:
        return list(client.scan_iter(RESULT_KEYS))


def rows(bundle: EmbeddingBundle, item_ids: list[str]) -> np.ndarray:
    lookup = bundle.catalog.index_lookup()
    return np.asarray([lookup[i] for i in item_ids], dtype=np.int64)


def seen_by(bundle: EmbeddingBundle, user: str) -> set[str]:
    assert bundle.users is not None
    position = bundle.users.user_ids.tolist().index(user)
    return {str(bundle.catalog.item_ids[r]) for r in bundle.users.seen(position)}
