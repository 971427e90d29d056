"""Builds the serving object graph from settings and bundle directories; wiring only (no BentoML,
and nothing here runs per request)."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from redis.exceptions import RedisError

from recsys.app.canary_control import CanaryControl
from recsys.app.live_models import LiveModels
from recsys.app.models_file import ModelRefs
from recsys.app.runtime import Runtime
from recsys.breaker import CircuitBreaker
from recsys.experiments.canary_store import CanaryStore
from recsys.experiments.routing import Router, active_experiment
from recsys.experiments.shadow import ShadowConfig, ShadowScorer
from recsys.models.bundles import EmbeddingBundle, RankerBundle, check_compatible
from recsys.models.policy import RankingPolicy
from recsys.models.registry_client import CHALLENGER, CHAMPION, RegistryClient
from recsys.pipeline.event_recording import EventRecorder
from recsys.pipeline.rank_items import ItemListRanker
from recsys.pipeline.ranking import RankerChain
from recsys.pipeline.recommend import PipelineOptions, RecommendPipeline
from recsys.pipeline.resolver import RequestResolver, ServedModels
from recsys.pipeline.retrieval import (
    AnnSource,
    CandidateSource,
    ItemToItemSource,
    PopularSource,
    Retriever,
)
from recsys.pipeline.scorers import LocalScorer, Scorer
from recsys.pipeline.search import SearchOptions, SearchPipeline
from recsys.pipeline.similar_items import SimilarItems
from recsys.pipeline.slots import ModelSlot
from recsys.pipeline.towers import LocalUserTower, UserTower
from recsys.search.engine import SearchEngine, build_search_engine
from recsys.search.fusion import FusionRule
from recsys.search.learned import SearchRanking
from recsys.search.retrievers import QueryRetriever
from recsys.settings import ServingSettings
from recsys.stores.cache import ResultCache
from recsys.stores.cache_config import CacheConfig
from recsys.stores.history import HistoryStore
from recsys.stores.invalidation import InvalidationListener, invalidation_channel
from recsys.stores.precomputed import PrecomputedTier
from recsys.telemetry import BreakerStateEvents, Telemetry

log = logging.getLogger(__name__)
WITHOUT_REDIS = ("RECSYS_REDIS_URL is not set: results are cached in this process only (no L2 "
                 "cache shared by workers and replicas), there is no event history (/events "
                 "answers 503) and no canary")


@dataclass(frozen=True)
class RemoteModels:
    """One alias's user tower and ranker when they run in model services (topology
    "services"); the fallback ranker and retrieval stay in this process."""

    user_tower: UserTower
    scorer: Scorer


class StageWrapper(Protocol):
    """Wraps a stage's adapter before a slot uses it. Fault injection (devtools/faults.py) is the
    one implementation; the runtime ships none."""

    def user_tower(self, alias: str, tower: UserTower) -> UserTower: ...

    def scorer(self, alias: str, stage: str, scorer: Scorer) -> Scorer: ...

    def source(self, alias: str, source: CandidateSource) -> CandidateSource: ...

    def search_retriever(self, alias: str, retriever: QueryRetriever) -> QueryRetriever: ...

    def search_ranker(self, alias: str, ranker: SearchRanking) -> SearchRanking: ...


class NoWrapping:
    def user_tower(self, alias: str, tower: UserTower) -> UserTower:
        return tower

    def scorer(self, alias: str, stage: str, scorer: Scorer) -> Scorer:
        return scorer

    def source(self, alias: str, source: CandidateSource) -> CandidateSource:
        return source

    def search_retriever(self, alias: str, retriever: QueryRetriever) -> QueryRetriever:
        return retriever

    def search_ranker(self, alias: str, ranker: SearchRanking) -> SearchRanking:
        return ranker


def candidate_sources(embedding: EmbeddingBundle,
                      settings: ServingSettings) -> list[CandidateSource]:
    """The retrieval sources of one embedding bundle (item-to-item: its table, else searched)."""
    return [
        AnnSource(embedding.index, settings.ann_candidates),
        PopularSource(embedding.catalog.popular_rows, settings.popular_candidates),
        ItemToItemSource(embedding.neighbours, settings.item_to_item_seeds,
                         settings.item_to_item_per_seed),
    ]


def build_slot(refs: ModelRefs, settings: ServingSettings, telemetry: Telemetry,
               remote: RemoteModels | None = None, wrap: StageWrapper | None = None) -> ModelSlot:
    wrap = wrap or NoWrapping()
    embedding = EmbeddingBundle.load(refs.paths["embedding"], threads=settings.onnx_threads,
                                     load_user_tower=remote is None)
    ranker = RankerBundle.load(refs.paths["ranker"], "ranker", threads=settings.onnx_threads,
                               int8=settings.ranker_int8)
    fallback = RankerBundle.load(refs.paths["fallback_ranker"], "fallback_ranker", threads=1)
    check_compatible(embedding, ranker)
    check_compatible(embedding, fallback)
    for bundle in (embedding, ranker, fallback):  # the sessions as loaded, against training's
        bundle.check_parity()
    retriever = Retriever(
        sources=[wrap.source(refs.alias, s) for s in candidate_sources(embedding, settings)],
        item_vectors=embedding.item_vectors, timeout_s=settings.retrieval_timeout_ms / 1000,
        on_event=telemetry.event)
    breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s,
                             on_state_change=BreakerStateEvents(telemetry.event,
                                                                f"ranker_{refs.alias}"))
    chain = RankerChain(
        primary=wrap.scorer(refs.alias, "ranker", remote.scorer if remote else LocalScorer(ranker)),
        fallback=wrap.scorer(refs.alias, "fallback", LocalScorer(fallback)),
        breaker=breaker, timeout_s=settings.ranking_timeout_ms / 1000, on_event=telemetry.event)
    tower = wrap.user_tower(refs.alias, remote.user_tower if remote else LocalUserTower(embedding))
    return ModelSlot(alias=refs.alias, versions=refs.versions, embedding=embedding,
                     scaler=ranker.scaler, user_tower=tower,
                     tower_timeout_s=settings.tower_timeout_ms / 1000, retriever=retriever,
                     ranker=chain,
                     policy=ranker.policy if settings.ranking_policy == "trained"
                     else RankingPolicy(ranked_candidates=ranker.policy.ranked_candidates),
                     search=build_search(refs.alias, embedding, settings, wrap))


def build_search(alias: str, embedding: EmbeddingBundle, settings: ServingSettings,
                 wrap: StageWrapper) -> SearchEngine | None:
    """The slot's search index over its own catalogue (None with RECSYS_SEARCH=false)."""
    if not settings.search:
        return None
    engine = build_search_engine(embedding, typo_similarity=settings.search_typo_similarity,
                                 candidates=settings.search_candidates,
                                 learned=settings.search_ranker)
    ranker = None if engine.ranker is None else wrap.search_ranker(alias, engine.ranker)
    return replace(engine, vectors=wrap.search_retriever(alias, engine.vectors), ranker=ranker)


def build_cache(settings: ServingSettings, telemetry: Telemetry) -> ResultCache:
    """The two-level result cache; without Redis its in-process level (L1) alone."""
    return ResultCache(CacheConfig(
        l1_ttl_s={"results": min(settings.result_ttl_s, 30.0), "user_vector": 60.0},
        l2_ttl_s={"results": settings.result_ttl_s, "user_vector": settings.user_vector_ttl_s},
        l1_max_items=settings.l1_max_items, redis_timeout_s=settings.redis_timeout_ms / 1000,
        breaker_failure_threshold=settings.breaker_failures,
        breaker_reset_timeout_s=settings.breaker_reset_s,
    ), settings.redis_url or None, on_event=telemetry.event)


def build_invalidations(settings: ServingSettings, cache: ResultCache,
                        telemetry: Telemetry) -> InvalidationListener | None:
    """The listener that drops L1 entries when another worker records the user's event."""
    if not settings.redis_url:
        return None
    return InvalidationListener(settings.redis_url, invalidation_channel(cache.config.key_prefix),
                                cache.forget_user, cache.forget_all, on_event=telemetry.event)


def build_history(settings: ServingSettings, telemetry: Telemetry) -> HistoryStore | None:
    if not settings.redis_url:
        return None
    breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s,
                             on_state_change=BreakerStateEvents(telemetry.event, "redis_history"))
    return HistoryStore(settings.redis_url, max_events=settings.history_max_events,
                        timeout_s=settings.redis_timeout_ms / 1000, breaker=breaker,
                        on_event=telemetry.event)


def build_precomputed(settings: ServingSettings, telemetry: Telemetry) -> PrecomputedTier | None:
    """The batch job's lists, read before computing (RECSYS_PRECOMPUTED_TIER); None when off."""
    if not settings.precomputed_tier or not settings.redis_url:
        return None
    breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s,
                             failure_types=(RedisError, OSError, asyncio.TimeoutError),
                             on_state_change=BreakerStateEvents(telemetry.event,
                                                                "redis_precomputed"))
    return PrecomputedTier(settings.redis_url, timeout_s=settings.redis_timeout_ms / 1000,
                           breaker=breaker, list_settings=settings.list_fields(),
                           on_event=telemetry.event)


def build_shadow(settings: ServingSettings, telemetry: Telemetry) -> ShadowScorer:
    to_redis = settings.shadow_log == "redis"
    if to_redis and not settings.redis_url:
        raise ValueError("RECSYS_SHADOW_LOG=redis needs RECSYS_REDIS_URL")
    return ShadowScorer(ShadowConfig(
        fraction=settings.shadow_fraction, sink="redis" if to_redis else "jsonl",
        jsonl_path=None if to_redis else settings.shadow_log,
        redis_url=settings.redis_url if to_redis else None,
        challenger_timeout_s=settings.budget_ms / 1000 * 4,
    ), on_event=telemetry.event)


def wanted_aliases(settings: ServingSettings, router: Router) -> set[str]:
    """The aliases a process serves: the champion, what the experiment routes to, and the
    challenger when shadow scoring is on."""
    return router.aliases() | {CHAMPION} | ({CHALLENGER} if settings.shadow_fraction else set())


class ModelSetBuilder:
    """Builds the model slots of a list of bundles as one ServedModels with the router of the
    moment (the settings' experiment, or a canary's stage); bundles of aliases this process does
    not serve are left out, and slots of `reuse` whose versions did not change are kept.
    `remote`: alias -> model-service adapters (topology "services")."""

    def __init__(self, settings: ServingSettings, telemetry: Telemetry, *,
                 remote: Mapping[str, RemoteModels] | None = None,
                 wrap: StageWrapper | None = None) -> None:
        self.settings, self.telemetry = settings, telemetry
        self.remote, self.wrap = dict(remote or {}), wrap
        experiment = active_experiment(settings.experiment_file) \
            if settings.experiment_file else None
        self.default_router = self.router = Router(experiment)
        self.default_aliases = frozenset(wanted_aliases(settings, self.router))
        self.aliases = set(self.default_aliases)

    def build(self, refs: list[ModelRefs],
              reuse: Mapping[str, ModelSlot] | None = None) -> ServedModels:
        slots = {}
        for r in refs:
            if r.alias not in self.aliases:
                continue
            kept = (reuse or {}).get(r.alias)
            slots[r.alias] = kept if kept is not None and kept.versions == r.versions else \
                build_slot(r, self.settings, self.telemetry, self.remote.get(r.alias), self.wrap)
        return ServedModels(slots, self.router)


def build_runtime(settings: ServingSettings, refs: list[ModelRefs], telemetry: Telemetry, *,
                  remote: Mapping[str, RemoteModels] | None = None,
                  wrap: StageWrapper | None = None) -> Runtime:
    """The runtime of pinned models: every slot the experiment, the champion and shadow scoring
    need, and the endpoints over them."""
    models = ModelSetBuilder(settings, telemetry, remote=remote, wrap=wrap).build(refs)
    return assemble_runtime(settings, models, telemetry)


def build_live_runtime(settings: ServingSettings, telemetry: Telemetry, *,
                       wrap: StageWrapper | None = None) -> Runtime:
    """The runtime of a process that follows the registry's aliases (RECSYS_MODEL_SOURCE=
    registry): it serves what they point to now, and swaps when they move."""
    assert settings.registry_uri is not None  # checked by ServingSettings
    client = RegistryClient(settings.registry_uri, settings.model_cache_dir)
    live = LiveModels(client, ModelSetBuilder(settings, telemetry, wrap=wrap), settings, telemetry)
    return assemble_runtime(settings, live.initial(), telemetry, live)


def assemble_runtime(settings: ServingSettings, models: ServedModels, telemetry: Telemetry,
                     live: LiveModels | None = None) -> Runtime:
    if not settings.redis_url:
        log.warning(WITHOUT_REDIS)
    cache = build_cache(settings, telemetry)
    history = build_history(settings, telemetry)
    shadow = build_shadow(settings, telemetry) if settings.shadow_fraction > 0 else None
    vector_cache = cache if settings.topology == "services" else None
    resolver = RequestResolver(models, history, vector_cache, telemetry)
    options = PipelineOptions(
        ranked_candidates=settings.ranked_candidates, diversity=settings.diversity,
        max_per_category=settings.max_per_category, budget_s=settings.budget_ms / 1000,
        degraded_ttl_s=settings.degraded_ttl_s)
    precomputed = build_precomputed(settings, telemetry)
    pipeline = RecommendPipeline(resolver, options, cache, telemetry, shadow, precomputed)
    events = EventRecorder(resolver, history, cache, settings.event_id_ttl_s)
    search = SearchPipeline(resolver, SearchOptions(
        fusion=FusionRule(settings.search_rrf_k, {"vector": settings.search_vector_weight,
                                                  "personal": settings.search_personal_weight}),
        vector_timeout_s=settings.search_vector_timeout_ms / 1000,
        personal_timeout_s=settings.search_personal_timeout_ms / 1000,
        degraded_ttl_s=settings.degraded_ttl_s), cache, telemetry)
    canary = None
    if live is not None and settings.redis_url:
        canary = CanaryControl(CanaryStore(settings.redis_url), live, telemetry,
                               settings.canary_tick_s)
        pipeline.outcomes = events.clicks = canary
    return Runtime(
        pipeline=pipeline, similar_items=SimilarItems(resolver),
        item_ranker=ItemListRanker(resolver), event_recorder=events, cache=cache,
        history=history, shadow=shadow, live=live, canary=canary, precomputed=precomputed,
        search=search, invalidations=build_invalidations(settings, cache, telemetry))
