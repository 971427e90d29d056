"""The serving objects of one process, with their lifecycle and what /info reports about them."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from redis.exceptions import RedisError

from recsys.app.canary_control import CanaryControl, CanaryError
from recsys.app.live_models import LiveModels
from recsys.errors import StoreError
from recsys.experiments.shadow import ShadowScorer
from recsys.pipeline.event_recording import EventRecorder
from recsys.pipeline.rank_items import ItemListRanker
from recsys.pipeline.recommend import RecommendPipeline
from recsys.pipeline.search import SearchPipeline
from recsys.pipeline.similar_items import SimilarItems
from recsys.settings import ServingSettings
from recsys.stores.cache import ResultCache
from recsys.stores.history import HistoryStore
from recsys.stores.invalidation import InvalidationListener
from recsys.stores.precomputed import PrecomputedTier

LOG = logging.getLogger("bentoml.recsys.runtime")


class _Closes(Protocol):
    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Runtime:
    """One object per endpoint (pipeline: /recommend) and the stores they share."""

    pipeline: RecommendPipeline
    similar_items: SimilarItems
    item_ranker: ItemListRanker
    event_recorder: EventRecorder
    cache: ResultCache | None
    history: HistoryStore | None
    shadow: ShadowScorer | None = None
    live: LiveModels | None = None  # following the registry (None: pinned models)
    canary: CanaryControl | None = None  # canary releases (following the registry, with Redis)
    precomputed: PrecomputedTier | None = None  # the batch job's lists (RECSYS_PRECOMPUTED_TIER)
    search: SearchPipeline | None = None  # /search
    invalidations: InvalidationListener | None = None  # other workers' events reach L1 (Redis)

    async def start(self) -> None:
        """Inside the serving event loop: start background workers, warm up, then follow the
        registry when the models come from it."""
        if self.invalidations is not None:
            self.invalidations.start()
        if self.shadow is not None:
            self.shadow.start()
        await self.pipeline.warm(self.pipeline.resolver.models, rounds=3)
        if self.canary is not None:
            try:  # a canary that was running before a restart resumes at its stage
                await self.canary.tick(self.pipeline)
            except StoreError as error:
                LOG.warning("canary state not read at start-up (read again each tick): %s",
                            error)
            self.canary.start(self.pipeline)
        if self.live is not None:
            self.live.start(self.pipeline)

    def info(self, settings: ServingSettings) -> dict[str, Any]:
        """Models per alias, experiment, topology and the settings that shape responses."""
        models = self.pipeline.resolver.models
        slots, experiment = models.slots, models.router.experiment
        return {
            "models": {alias: slot.versions for alias, slot in slots.items()},
            "catalogue_items": {alias: slot.catalog.size for alias, slot in slots.items()},
            "history_len": {alias: slot.history_len for alias, slot in slots.items()},
            "ranking_policy": {alias: {**slot.policy.to_metadata(),
                                       "described": slot.policy.describe()}
                               for alias, slot in slots.items()},
            "experiment": {"name": experiment.name,
                           "variants": [{"name": v.name, "alias": v.alias, "weight": v.weight}
                                        for v in experiment.variants]},
            "topology": settings.topology,
            "redis": bool(settings.redis_url),
            "precomputed_tier": self.precomputed is not None,
            "limits": {"max_k": settings.max_k, "max_list_items": settings.max_list_items,
                       "max_body_bytes": settings.max_body_bytes},
            "candidates": {"ann": settings.ann_candidates, "popular": settings.popular_candidates,
                           "ranked": settings.ranked_candidates},
            "model_source": self.live.info() if self.live is not None else {"source": "pinned"},
            "canary": self.canary.info() if self.canary is not None else None,
            "search": {"candidates": settings.search_candidates, "rrf_k": settings.search_rrf_k,
                       "weights": {"bm25": 1.0, "vector": settings.search_vector_weight,
                                   "personal": settings.search_personal_weight},
                       "typo_similarity": settings.search_typo_similarity,
                       "ranking": {alias: slot.search.ranking for alias, slot in slots.items()
                                   if slot.search is not None}}
            if settings.search else None,
        }

    def canary_control(self) -> CanaryControl:
        """The canary control of a service that can run canaries; CanaryError says what a
        service that cannot lacks."""
        if self.canary is None:
            raise CanaryError("action", "canary releases and live rollbacks need a service that "
                              "follows the registry (RECSYS_MODEL_SOURCE=registry) with Redis "
                              "(RECSYS_REDIS_URL)")
        return self.canary

    async def aclose(self) -> None:
        """Close every part. A part whose close fails (under load a Redis socket can take longer
        than its timeout to close) is logged, and the parts after it still close."""
        parts: dict[str, _Closes | None] = {
            "invalidations": self.invalidations, "canary": self.canary, "live": self.live,
            "shadow": self.shadow, "cache": self.cache, "history": self.history,
            "precomputed": self.precomputed}
        for name, part in parts.items():
            if part is None:
                continue
            try:
                await part.aclose()
            except (RedisError, OSError) as error:
                LOG.warning("closing the %s failed (%s: %s), the other parts are closed",
                            name, type(error).__name__, error)
        if self.search is not None:
            self.search.close()
