"""Prometheus metrics for the request path; BentoML serves them on /metrics with its own."""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from recsys.telemetry import Telemetry

_STAGE_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)

STAGE_SECONDS = Histogram("recsys_stage_seconds", "Time spent per pipeline stage",
                          ["stage"], buckets=_STAGE_BUCKETS)
CACHE_LOOKUPS = Counter("recsys_cache_lookups_total", "Cache lookups by level that served them",
                        ["kind", "level"])
FALLBACKS = Counter("recsys_fallbacks_total", "Degradations by reason", ["reason"])
SOURCE_FAILURES = Counter("recsys_source_failures_total", "Candidate source failures",
                          ["source", "error"])
CANDIDATES = Histogram("recsys_candidates", "Candidates retrieved per request",
                       buckets=(10, 50, 100, 200, 500, 1000, 2000, 5000))
COLD_STARTS = Counter("recsys_cold_starts_total", "Requests from users without history (the "
                      "popular items answered them)")
POLICY_PATHS = Counter("recsys_unranked_lists_total", "Lists the ranking policy served without "
                       "the ranker: item_to_item (short histories) or retrieval (a ranker that "
                       "lost to retrieval order on validation)", ["path"])
EXPOSURES = Counter("recsys_variant_exposures_total", "Requests served per experiment variant",
                    ["variant"])
BREAKER_STATE = Gauge("recsys_circuit_breaker_open", "1 when a circuit breaker is open "
                      "(0.5 half-open, 0 closed)", ["breaker"])
PRECOMPUTED = Counter("recsys_precomputed_total", "Reads of the precomputed tier on a cache miss "
                      "(RECSYS_PRECOMPUTED_TIER): hit, miss, stale (an event since the batch "
                      "job), short (a list shorter than k), error", ["outcome"])
SEARCHES = Counter("recsys_search_requests_total", "Search results computed (cache misses), "
                   "by whether the user's taste took part and whether any item matched",
                   ["personalised", "result"])
SEARCH_CORRECTIONS = Counter("recsys_search_typo_corrections_total", "Query words read as "
                             "another word of the titles (typo tolerance)")
REDIS_ERRORS = Counter("recsys_redis_errors_total", "Redis calls that failed", ["component", "op"])
INVALIDATIONS = Counter("recsys_cache_invalidations_total", "Other workers' event generation "
                        "bumps received (each drops the user's in-process entries)")
INVALIDATION_FEED = Gauge("recsys_cache_invalidation_feed_up", "1 while this worker is "
                          "subscribed to the cache invalidation channel", multiprocess_mode="min")
SHADOW = Counter("recsys_shadow_total", "Shadow scoring outcomes", ["outcome"])
SHADOW_OVERLAP = Histogram("recsys_shadow_overlap", "Champion/challenger overlap@k",
                           buckets=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0))

MODEL_SWAPS = Counter("recsys_model_swaps_total", "Model sets swapped in while serving")
MODEL_SWAP_SECONDS = Histogram("recsys_model_swap_seconds", "From seeing an alias move to the "
                               "swap: fetch, verify, load, warm", buckets=(1, 2, 5, 10, 20, 60))
MODEL_LOAD_FAILURES = Counter("recsys_model_load_failures_total", "Registry polls or model sets "
                              "that failed (the set serving went on)", ["stage", "error"])
SERVED_MODEL = Gauge("recsys_served_model", "1 for each model version this worker serves",
                     ["alias", "kind", "version"])
CANARY_SHARE = Gauge("recsys_canary_share", "Share of users a canary's challenger serves (0: no "
                     "canary running)", multiprocess_mode="mostrecent")
CANARY_STAGE = Gauge("recsys_canary_stage", "Stage of the canary (index into its stages)",
                     multiprocess_mode="mostrecent")
CANARY_TRANSITIONS = Counter("recsys_canary_transitions_total", "Canary state changes seen by "
                             "this worker, by the state reached", ["status"])
CANARY_GUARD = Gauge("recsys_canary_guard", "The guard values of the canary's current stage, by "
                     "variant (set by the worker that judges)", ["guard", "variant"],
                     multiprocess_mode="mostrecent")
CANARY_STORE_ERRORS = Counter("recsys_canary_store_errors_total", "Canary store (Redis) calls "
                              "that failed")

_BREAKER_VALUES = {"closed": 0.0, "half_open": 0.5, "open": 1.0}


@lru_cache(maxsize=4096)  # label values are few (stages, variants, levels, reasons, sources)
def _child(metric: Any, *values: str) -> Any:
    """metric.labels(*values), looked up once: labels() takes a lock and checks its arguments
    on every call, a measurable share of a cache hit's few microseconds."""
    return metric.labels(*values)


class PrometheusTelemetry(Telemetry):
    """Maps pipeline, cache, breaker and shadow events onto the metrics above."""

    def observe(self, stage: str, seconds: float) -> None:
        _child(STAGE_SECONDS, stage).observe(seconds)

    def event(self, name: str, **labels: str) -> None:
        if name == "exposure":
            _child(EXPOSURES, labels["variant"]).inc()
        elif name == "fallback":
            _child(FALLBACKS, labels["reason"]).inc()
        elif name == "cold_start":
            COLD_STARTS.inc()
        elif name == "ranking_path":
            _child(POLICY_PATHS, labels["path"]).inc()
        elif name == "candidates":
            CANDIDATES.observe(float(labels["count"]))
        elif name == "source_failed":
            _child(SOURCE_FAILURES, labels["source"], labels.get("error", "error")).inc()
        elif name == "lookup":
            _child(CACHE_LOOKUPS, labels["kind"], labels["level"]).inc()
        elif name == "search":
            _child(SEARCHES, labels["personalised"], labels["result"]).inc()
        elif name == "search_correction":
            SEARCH_CORRECTIONS.inc()
        elif name == "precomputed":
            _child(PRECOMPUTED, labels["outcome"]).inc()
        elif name in ("redis_error", "history_error"):
            _child(REDIS_ERRORS, "cache" if name == "redis_error" else "history",
                                labels.get("op", labels.get("operation", ""))).inc()
        elif name == "breaker_state":
            _child(BREAKER_STATE, labels["breaker"]).set(_BREAKER_VALUES.get(labels["state"], 0.0))
        elif name == "model_swap":
            MODEL_SWAPS.inc()
            MODEL_SWAP_SECONDS.observe(float(labels["seconds"]))
        elif name == "model_load_failed":
            _child(MODEL_LOAD_FAILURES, labels["stage"], labels["error"]).inc()
        elif name == "model_served":
            _child(SERVED_MODEL, labels["alias"], labels["kind"], labels["version"]).set(
                float(labels["serving"]))
        elif name == "canary_state":
            _child(CANARY_TRANSITIONS, labels["status"]).inc()
            CANARY_SHARE.set(float(labels["share"]))
            CANARY_STAGE.set(float(labels["stage"]))
        elif name == "canary_guard":
            _child(CANARY_GUARD, labels["guard"], labels["variant"]).set(float(labels["value"]))
        elif name == "invalidation":
            INVALIDATIONS.inc()
        elif name == "invalidation_feed":
            INVALIDATION_FEED.set(1.0 if labels["state"] == "up" else 0.0)
        elif name == "canary_store_error":
            CANARY_STORE_ERRORS.inc()
        elif name.startswith("shadow_"):
            _child(SHADOW, name.removeprefix("shadow_")).inc()
            if "overlap" in labels:
                SHADOW_OVERLAP.observe(float(labels["overlap"]))
