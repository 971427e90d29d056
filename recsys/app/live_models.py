"""Serving what the registry's aliases point to, and following them while requests flow.

When an alias moves (a promotion, a rollback, a new challenger), every worker notices at its next
poll (RECSYS_REGISTRY_POLL_S, jittered so that workers and replicas do not poll in step), fetches
the new set, verifies it (manifest checksums, the embedding/ranker pairing, each ONNX session
against its parity sample), loads it beside the set serving, warms it with the requests this
worker served last and the cache with its most active users, then swaps it in whole. A request
finishes on the set it started with; the old set is released once no request holds it. A set that
fails any step is not served: the old one goes on, and the failure is logged, counted and shown
in /info until the aliases move again.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from recsys.app.models_file import ModelRefs
from recsys.errors import ArtifactError
from recsys.experiments.routing import Router
from recsys.models.registry_client import CHAMPION, AliasedSet, RegistryClient
from recsys.pipeline.recommend import RecommendPipeline
from recsys.pipeline.resolver import ServedModels
from recsys.pipeline.slots import ModelSlot
from recsys.settings import ServingSettings
from recsys.telemetry import Telemetry

LOG = logging.getLogger("bentoml.recsys.live")  # BentoML shows its logger tree at INFO
JITTER = 0.2  # each wait is the poll interval +- 20%
RETRY_FAILED_S = 60.0  # a set that failed to load is tried again after this (a transient fault)
Target = dict[str, dict[str, str]]  # alias -> kind -> model tag


class SetBuilder(Protocol):
    aliases: set[str]  # what to serve now (a canary adds the challenger)
    default_aliases: frozenset[str]
    router: Router  # how to route now (a canary's stage, or the settings' experiment)
    default_router: Router

    def build(self, refs: list[ModelRefs],
              reuse: Mapping[str, ModelSlot] | None = None) -> ServedModels: ...


@dataclass
class LiveState:
    """What /info shows of the following: what is served, the last check, swap and failure."""

    serving: Target = field(default_factory=dict)
    checks: int = 0
    last_check: str | None = None
    last_swap: dict[str, Any] | None = None
    last_failure: dict[str, Any] | None = None


class LiveModels:
    def __init__(self, client: RegistryClient, builder: SetBuilder, settings: ServingSettings,
                 telemetry: Telemetry) -> None:
        self.client, self.builder = client, builder
        self.settings, self.telemetry = settings, telemetry
        self.state = LiveState()
        self.failed: Target | None = None  # not tried again until the aliases move, or ...
        self.failed_at = 0.0  # ... RETRY_FAILED_S after this (monotonic) time
        self.task: asyncio.Task[None] | None = None
        self.checking = asyncio.Lock()  # the poll and a canary's command never load at once
        self.mismatches = 0  # polls in a row that found an alias's models mispaired

    def initial(self) -> ServedModels:
        """The set the aliases point to now, built at start-up (blocking: before any request)."""
        sets = self.aliased_sets()
        if CHAMPION not in sets:
            raise ArtifactError(f"no champion is registered in {self.client.uri}: train one "
                                "(python -m training run) or serve pinned models")
        models = self.builder.build(self.fetch(sets))
        self.state.serving = models.versions
        self.report_serving({}, models.versions)
        return models

    def aliased_sets(self) -> dict[str, AliasedSet]:
        """alias -> what it points to, for every served alias that is set in all three models."""
        found = {alias: self.client.aliased_set(alias) for alias in sorted(self.builder.aliases)}
        for aliased in found.values():
            if aliased is not None:
                aliased.check_pairing()
        return {alias: aliased for alias, aliased in found.items() if aliased is not None}

    def fetch(self, sets: dict[str, AliasedSet]) -> list[ModelRefs]:
        """Every bundle of `sets` in the local cache, verified; ModelRefs to build slots of."""
        return [ModelRefs(alias, {kind: self.client.fetch(version, kind)
                                  for kind, version in aliased.versions.items()},
                          aliased.tags)
                for alias, aliased in sets.items()]

    def start(self, pipeline: RecommendPipeline) -> None:
        """Poll in the background of this worker's event loop."""
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.follow(pipeline),
                                                               name="registry-follower")

    async def aclose(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await asyncio.to_thread(self.client.close)

    async def follow(self, pipeline: RecommendPipeline) -> None:
        while True:
            interval = self.settings.registry_poll_s
            await asyncio.sleep(interval * random.uniform(1 - JITTER, 1 + JITTER))
            await self.check(pipeline)

    async def check(self, pipeline: RecommendPipeline) -> bool:
        """One poll: True when a new set was swapped in."""
        async with self.checking:
            return await self._check(pipeline)

    async def _check(self, pipeline: RecommendPipeline) -> bool:
        self.state.checks += 1
        self.state.last_check = now()
        try:
            sets = await asyncio.to_thread(self.aliased_sets)
        except ArtifactError as error:  # a set whose rankers pair with another embedding
            self.mismatches += 1
            if self.mismatches == 1:  # likely read mid-move (three aliases, three writes)
                LOG.info("aliases read while moving, read again next poll: %s", error)
            else:
                self.record_failure(None, error, "registry")
            return False
        except Exception as error:  # noqa: BLE001 - the registry is down: keep serving, try again
            self.record_failure(None, error, "registry")
            return False
        self.mismatches = 0
        target = {alias: aliased.tags for alias, aliased in sets.items()}
        if CHAMPION not in target or target == self.state.serving or (
                target == self.failed and time.monotonic() - self.failed_at < RETRY_FAILED_S):
            return False
        started = time.perf_counter()
        try:
            models = await asyncio.to_thread(self.load, sets, pipeline.resolver.slots)
            await pipeline.warm(models)
            champion = models.slots[CHAMPION]
            if champion is not pipeline.resolver.slots.get(CHAMPION):  # a new champion
                await pipeline.prefill(champion, self.settings.warm_users,
                                       self.settings.warm_seconds)
        except Exception as error:  # noqa: BLE001 - whatever fails, the old set keeps serving
            self.record_failure(target, error, "load")
            return False
        previous = pipeline.resolver.serve(models)
        self.record_swap(previous.versions, models.versions, time.perf_counter() - started)
        return True

    def load(self, sets: dict[str, AliasedSet],
             serving: Mapping[str, ModelSlot] | None = None) -> ServedModels:
        return self.builder.build(self.fetch(sets), reuse=serving)

    def record_swap(self, before: Target, after: Target, seconds: float) -> None:
        self.failed = None
        self.state.serving = after
        self.state.last_swap = {"at": now(), "from": before, "to": after,
                                "seconds": round(seconds, 3)}
        LOG.info("now serving %s (was %s), loaded and warmed in %.2f s", after, before, seconds)
        self.telemetry.event("model_swap", seconds=repr(seconds))
        self.report_serving(before, after)

    def record_failure(self, target: Target | None, error: Exception, stage: str) -> None:
        if target is not None:
            self.failed, self.failed_at = target, time.monotonic()
        self.state.last_failure = {"at": now(), "stage": stage, "target": target,
                                   "error": f"{type(error).__name__}: {error}"}
        LOG.warning("still serving %s: %s of %s failed: %s: %s", self.state.serving, stage,
                    target, type(error).__name__, error)
        self.telemetry.event("model_load_failed", stage=stage, error=type(error).__name__)

    def report_serving(self, before: Target, after: Target) -> None:
        for alias, kinds in before.items():
            for kind, tag in kinds.items():
                if after.get(alias, {}).get(kind) != tag:
                    self.telemetry.event("model_served", alias=alias, kind=kind, version=tag,
                                         serving="0")
        for alias, kinds in after.items():
            for kind, tag in kinds.items():
                self.telemetry.event("model_served", alias=alias, kind=kind, version=tag,
                                     serving="1")

    def info(self) -> dict[str, Any]:
        return {"source": "registry", "registry": self.client.uri,
                "poll_s": self.settings.registry_poll_s,
                "following": sorted(self.builder.aliases), **self.state.__dict__}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
