"""Builds the serving object graph from settings and bundle directories (no BentoML here)."""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys.breaker import CircuitBreaker
from recsys.bundles import EmbeddingBundle, RankerBundle, check_compatible
from recsys.cache import CacheConfig, ResultCache
from recsys.endpoints import Endpoints
from recsys.errors import ArtifactError
from recsys.events import Telemetry
from recsys.experiments import Router, active_experiment
from recsys.faults import Faults
from recsys.history import HistoryStore
from recsys.index_tuning import item_query_nprobe
from recsys.pipeline import PipelineOptions, Recommender
from recsys.ranking import AsyncScorer, RankerChain
from recsys.retrieval import AnnSource, ItemToItemSource, PopularSource, RetrievalQuery, Retriever
from recsys.settings import ServingSettings
from recsys.shadow import ShadowConfig, ShadowScorer
from recsys.slots import ModelSlot

KINDS = ("embedding", "ranker", "fallback_ranker")
AsyncTower = Callable[[np.ndarray, np.ndarray], Awaitable[np.ndarray]]


@dataclass(frozen=True)
class ModelRefs:
    """One alias's three bundles on disk and the versions they are known by."""

    alias: str
    paths: dict[str, Path]  # kind -> bundle directory
    versions: dict[str, str]  # kind -> e.g. "recsys-ranker:v3"


def read_models_file(path: Path) -> dict[str, dict[str, str]]:
    """{"champion": {"embedding": "<bentoml tag>", "ranker": ..., "fallback_ranker": ...}, ...}"""
    if not path.is_file():
        raise ArtifactError(f"models file {path} not found: run `python -m registry export` "
                            "(the README's main command does) or set RECSYS_MODELS_FILE")
    data = json.loads(path.read_text())
    for alias, kinds in data.items():
        missing = [k for k in KINDS if k not in kinds]
        if missing:
            raise ArtifactError(f"{path}: alias {alias!r} lacks {missing}")
    if "champion" not in data:
        raise ArtifactError(f"{path}: no 'champion' entry (aliases: {sorted(data)})")
    return data


def _with_fault(source: Callable[[RetrievalQuery], np.ndarray], name: str,
                faults: Faults) -> Callable[[RetrievalQuery], np.ndarray]:
    if name not in faults.modes:
        return source

    def faulty(query: RetrievalQuery) -> np.ndarray:
        faults.check(name)
        return source(query)
    # Not inline: an injected hang must run where the retrieval timeout can cut it off, as a
    # blocking source's would.
    faulty.name = name  # type: ignore[attr-defined]
    return faulty


def candidate_sources(embedding: EmbeddingBundle, settings: ServingSettings,
                      ) -> list[AnnSource | PopularSource | ItemToItemSource]:
    """The retrieval sources of one embedding bundle: ANN, popular, item-to-item (with the IVF
    probes training measured for item queries, when the manifest has them)."""
    return [
        AnnSource(embedding.index, settings.ann_candidates),
        PopularSource(embedding.catalog.popularity, settings.popular_candidates),
        ItemToItemSource(embedding.index, embedding.item_vectors, settings.item_to_item_seeds,
                         settings.item_to_item_per_seed,
                         item_query_nprobe(embedding.index,
                                           embedding.manifest.metadata.get("index_item_nprobe"))),
    ]


def build_slot(refs: ModelRefs, settings: ServingSettings, telemetry: Telemetry, faults: Faults,
               remote_ranker: AsyncScorer | None = None,
               remote_tower: AsyncTower | None = None) -> ModelSlot:
    embedding = EmbeddingBundle.load(refs.paths["embedding"], threads=settings.onnx_threads,
                                     load_user_tower=remote_tower is None)
    ranker = RankerBundle.load(refs.paths["ranker"], "ranker", threads=settings.onnx_threads,
                               int8=settings.ranker_int8)
    fallback = RankerBundle.load(refs.paths["fallback_ranker"], "fallback_ranker", threads=1)
    check_compatible(embedding, ranker)
    check_compatible(embedding, fallback)
    retriever = Retriever([_with_fault(s, s.name, faults) for s in candidate_sources(
                              embedding, settings)], embedding.item_vectors,
                          settings.retrieval_timeout_ms / 1000, telemetry.event)

    async def local_ranker(features: np.ndarray) -> np.ndarray:
        return ranker.score(features)

    async def primary(features: np.ndarray) -> np.ndarray:
        await faults.acheck("ranker")
        return await (remote_ranker or local_ranker)(features)

    def fallback_score(features: np.ndarray) -> np.ndarray:
        faults.check("fallback")
        return fallback.score(features)

    async def local_tower(history: np.ndarray, attributes: np.ndarray) -> np.ndarray:
        return embedding.encode_users(history, attributes)

    async def tower(history: np.ndarray, attributes: np.ndarray) -> np.ndarray:
        await faults.acheck("user_tower")
        return await (remote_tower or local_tower)(history, attributes)

    breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s,
                             on_state_change=_breaker_listener(telemetry, f"ranker_{refs.alias}"))
    chain = RankerChain(primary, fallback_score, breaker, settings.ranking_timeout_ms / 1000,
                        telemetry.event)
    return ModelSlot(refs.alias, refs.versions, embedding, ranker.scaler, tower, retriever, chain)


def _breaker_listener(telemetry: Telemetry, name: str) -> Callable[[str, str], None]:
    def listen(previous: str, new: str) -> None:
        telemetry.event("breaker_state", breaker=name, state=new, previous=previous)
    return listen


@dataclass
class Runtime:
    recommender: Recommender
    endpoints: Endpoints
    cache: ResultCache | None
    history: HistoryStore | None
    shadow: ShadowScorer | None = None

    async def start(self) -> None:
        """Inside the serving event loop: start background workers, then warm up."""
        if self.shadow is not None:
            self.shadow.start()
        await self.recommender.warmup()

    def info(self, settings: ServingSettings) -> dict[str, Any]:
        """Models per alias, experiment, topology and the settings that shape responses."""
        slots = self.recommender.slots
        experiment = self.recommender.router.experiment
        return {
            "models": {alias: slot.versions for alias, slot in slots.items()},
            "catalogue_items": {alias: slot.embedding.catalog.size for alias, slot in slots.items()},
            "experiment": {"name": experiment.name,
                           "variants": [{"name": v.name, "alias": v.alias, "weight": v.weight}
                                        for v in experiment.variants]},
            "topology": settings.topology,
            "redis": bool(settings.redis_url),
            "limits": {"max_k": settings.max_k, "max_list_items": settings.max_list_items},
            "candidates": {"ann": settings.ann_candidates, "popular": settings.popular_candidates,
                           "ranked": settings.ranked_candidates},
        }

    async def aclose(self) -> None:
        if self.shadow is not None:
            await self.shadow.aclose()
        if self.cache is not None:
            await self.cache.aclose()
        if self.history is not None:
            await self.history.aclose()


def build_runtime(settings: ServingSettings, refs: list[ModelRefs], telemetry: Telemetry,
                  remote_rankers: dict[str, AsyncScorer] | None = None,
                  remote_towers: dict[str, AsyncTower] | None = None) -> Runtime:
    faults = Faults.parse(settings.faults)
    experiment = active_experiment(settings.experiment_file) if settings.experiment_file else None
    router = Router(experiment)
    wanted = router.aliases() | {"champion"} | ({"challenger"} if settings.shadow_fraction else set())
    slots = {r.alias: build_slot(r, settings, telemetry, faults,
                                 (remote_rankers or {}).get(r.alias), (remote_towers or {}).get(r.alias))
             for r in refs if r.alias in wanted}
    champion = slots["champion"].embedding
    options = PipelineOptions(settings.ranked_candidates, settings.diversity,
                              settings.max_per_category, settings.budget_ms / 1000,
                              champion.history_len, settings.topology == "services",
                              settings.retrieval_timeout_ms / 1000, settings.degraded_ttl_s)
    cache = history = None
    if settings.redis_url:
        cache = ResultCache(CacheConfig(
            l1_ttl_s={"results": min(settings.result_ttl_s, 30.0), "user_vector": 60.0},
            l2_ttl_s={"results": settings.result_ttl_s, "user_vector": settings.user_vector_ttl_s},
            l1_max_items=settings.l1_max_items, redis_timeout_s=settings.redis_timeout_ms / 1000,
            breaker_failure_threshold=settings.breaker_failures,
            breaker_reset_timeout_s=settings.breaker_reset_s,
        ), settings.redis_url, on_event=telemetry.event)
        history = HistoryStore(settings.redis_url, settings.history_max_events,
                               settings.redis_timeout_ms / 1000,
                               CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s,
                                              on_state_change=_breaker_listener(telemetry, "redis_history")),
                               on_event=telemetry.event, faults=faults)
    shadow = None
    if settings.shadow_fraction > 0 and "challenger" in slots:
        to_redis = settings.shadow_log == "redis"
        if to_redis and not settings.redis_url:
            raise ValueError("RECSYS_SHADOW_LOG=redis needs RECSYS_REDIS_URL")
        shadow = ShadowScorer(ShadowConfig(
            fraction=settings.shadow_fraction, sink="redis" if to_redis else "jsonl",
            jsonl_path=None if to_redis else settings.shadow_log,
            redis_url=settings.redis_url if to_redis else None,
            challenger_timeout_s=settings.budget_ms / 1000 * 4,
        ), on_event=telemetry.event)
    recommender = Recommender(slots, router, options, cache, history, telemetry, shadow)
    return Runtime(recommender, Endpoints(recommender), cache, history, shadow)
