"""Scoring users in batches with the serving pipeline: each user's list is what /recommend computes
for a request of the user id and k alone (RecommendPipeline.compute on the slot build_runtime
builds, as a cache prefill does). One UserListScorer per Ray actor, or one in this process."""
from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from redis.exceptions import RedisError

from recsys.app.assembly import build_runtime
from recsys.app.models_file import ModelRefs
from recsys.breaker import CircuitBreaker
from recsys.models.registry_client import CHAMPION
from recsys.pipeline.recommend import DEFAULT_K
from recsys.pipeline.request import RecommendRequest
from recsys.pipeline.resolver import Routed
from recsys.settings import ServingSettings
from recsys.stores.precomputed import PrecomputedList, PrecomputedTier
from recsys.telemetry import Telemetry

# A list is never degraded for being slow on a busy node: the stage timeouts decide only whether
# serving falls back, and the job has no client waiting. Redis's too: with serving's 20 ms, a
# user's event read on a saturated machine (three Ray nodes and other jobs on two cores)
# timed out, and 1-4 of 150 lists came out degraded.
UNHURRIED_MS = {"budget_ms": 60_000.0, "tower_timeout_ms": 20_000.0,
                "retrieval_timeout_ms": 20_000.0, "ranking_timeout_ms": 20_000.0,
                "redis_timeout_ms": 5_000.0}
TIER_TIMEOUT_S = 5.0
LIST_COLUMNS = pa.schema([
    ("user_id", pa.string()),
    ("items", pa.list_(pa.string())),
    ("scores", pa.list_(pa.float64())),
    ("ranker", pa.string()),
    ("degraded", pa.bool_()),
    ("embedding_version", pa.string()),
    ("ranker_version", pa.string()),
    ("fallback_ranker_version", pa.string()),
    ("generation", pa.int64()),  # the user's event generation the list was computed at
    ("generated_at", pa.timestamp("us", tz="UTC")),
    ("scored_by", pa.string()),  # host:pid of the process (actor) that scored it
])


@dataclass(frozen=True)
class ScoringSpec:
    """What every scorer needs: the models, the serving settings the service runs with, k, and
    the Redis of the service (its events are read, the tier is written) or None."""

    refs: ModelRefs
    settings: ServingSettings
    k: int = DEFAULT_K
    redis_url: str | None = None
    ttl_s: float = 24 * 3600.0

    @classmethod
    def for_batch(cls, refs: ModelRefs, settings: ServingSettings, k: int,
                  redis_url: str | None, ttl_s: float) -> ScoringSpec:
        """The service's settings as the job runs them: unhurried stages, the models in this
        process, `redis_url` for events, no precomputed tier of its own, no secrets."""
        batch = settings.model_copy(update={
            **UNHURRIED_MS, "redis_url": redis_url, "topology": "inline",
            "precomputed_tier": False, "shadow_fraction": 0.0, "admin_token": None,
            "experiment_file": None, "faults": ""})
        return cls(refs, batch, k, redis_url, ttl_s)


class UserListScorer:
    """Loads the ONNX sessions and the FAISS index once (build_runtime, as the service does),
    then scores batches of user ids: {"user_id": [B] str} -> LIST_COLUMNS rows. With Redis,
    each list is stamped with the user's event generation, read before their history, and the
    lists that are not degraded are written to the precomputed tier."""

    def __init__(self, spec: ScoringSpec) -> None:
        self.spec = spec
        self.loop = asyncio.new_event_loop()
        # built as the champion: the alias only names a slot's breakers and faults
        refs = ModelRefs(CHAMPION, spec.refs.paths, spec.refs.versions)
        self.runtime = build_runtime(spec.settings, [refs], Telemetry())
        self.tier = None if spec.redis_url is None else PrecomputedTier(
            spec.redis_url, TIER_TIMEOUT_S,
            CircuitBreaker(1, 60.0, failure_types=(RedisError, OSError, asyncio.TimeoutError)),
            list_settings=spec.settings.list_fields())
        self.scored_by = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, npt.NDArray[Any]]) -> pa.Table:
        users = [str(u) for u in batch["user_id"]]
        return self.table(self.loop.run_until_complete(self.score(users)))

    async def score(self, users: Sequence[str]) -> list[PrecomputedList]:
        generations = await self.tier.generations(users) if self.tier else [0] * len(users)
        pipeline = self.runtime.pipeline
        slot = pipeline.resolver.champion
        lists = []
        for user, generation in zip(users, generations):
            resolved = pipeline.resolver.resolve(RecommendRequest(user, self.spec.k),
                                                 Routed(CHAMPION, slot))
            result = await pipeline.compute(resolved, time.perf_counter())
            lists.append(PrecomputedList(user, generation, self.spec.k, result))
        if self.tier is not None:
            await self.tier.write(slot.versions, [e for e in lists if not e.result["degraded"]],
                                  self.spec.ttl_s)
        return lists

    def table(self, lists: Sequence[PrecomputedList]) -> pa.Table:
        versions = self.spec.refs.versions
        now, n = datetime.now(timezone.utc), len(lists)
        return pa.table({
            "user_id": [e.user_id for e in lists],
            "items": [[i["item_id"] for i in e.result["items"]] for e in lists],
            "scores": [[i["score"] for i in e.result["items"]] for e in lists],
            "ranker": [e.result["ranker"] for e in lists],
            "degraded": [e.result["degraded"] for e in lists],
            **{f"{kind}_version": [versions[kind]] * n
               for kind in ("embedding", "ranker", "fallback_ranker")},
            "generation": [e.generation for e in lists],
            "generated_at": [now] * n,
            "scored_by": [self.scored_by] * n,
        }, schema=LIST_COLUMNS)

    def close(self) -> None:
        async def close_all() -> None:
            await self.runtime.aclose()
            if self.tier is not None:
                await self.tier.aclose()
        self.loop.run_until_complete(close_all())
        self.loop.close()


def score_in_process(spec: ScoringSpec, users: Sequence[str], batch_size: int) -> pa.Table:
    """The same scoring in this process, batch after batch: the loop Ray spreads over actors."""
    scorer = UserListScorer(spec)
    try:
        return pa.concat_tables(
            [scorer({"user_id": np.asarray(users[i:i + batch_size])})
             for i in range(0, len(users), batch_size)] or [LIST_COLUMNS.empty_table()])
    finally:
        scorer.close()
