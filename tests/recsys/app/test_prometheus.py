"""PrometheusTelemetry: what the request path reports lands in the metrics /metrics serves."""
from __future__ import annotations

from prometheus_client import REGISTRY

from recsys.app.prometheus import PrometheusTelemetry
from recsys.telemetry import BreakerStateEvents


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_events_and_timings_become_metrics() -> None:
    telemetry = PrometheusTelemetry()
    before = {
        "fallback": sample("recsys_fallbacks_total", reason="test_reason"),
        "exposure": sample("recsys_variant_exposures_total", variant="test_variant"),
        "source": sample("recsys_source_failures_total", source="ann", error="timeout"),
        "lookup": sample("recsys_cache_lookups_total", kind="results", level="l1"),
        "stage": sample("recsys_stage_seconds_count", stage="test_stage"),
        "history": sample("recsys_redis_errors_total", component="history", op="read"),
        "precomputed": sample("recsys_precomputed_total", outcome="stale"),
    }
    telemetry.event("fallback", reason="test_reason")
    telemetry.event("exposure", variant="test_variant")
    telemetry.event("source_failed", source="ann", error="timeout")
    telemetry.event("lookup", kind="results", level="l1")
    telemetry.event("history_error", operation="read", error="TimeoutError")
    telemetry.event("precomputed", outcome="stale")
    telemetry.observe("test_stage", 0.004)

    assert sample("recsys_fallbacks_total", reason="test_reason") == before["fallback"] + 1
    assert sample("recsys_variant_exposures_total", variant="test_variant") == \
        before["exposure"] + 1
    assert sample("recsys_source_failures_total", source="ann", error="timeout") == \
        before["source"] + 1
    assert sample("recsys_cache_lookups_total", kind="results", level="l1") == \
        before["lookup"] + 1
    assert sample("recsys_redis_errors_total", component="history", op="read") == \
        before["history"] + 1
    assert sample("recsys_stage_seconds_count", stage="test_stage") == before["stage"] + 1
    assert sample("recsys_precomputed_total", outcome="stale") == before["precomputed"] + 1


def test_breaker_state_changes_set_the_gauge_of_that_breaker() -> None:
    listener = BreakerStateEvents(PrometheusTelemetry().event, "ranker_test")

    listener("closed", "open")
    assert sample("recsys_circuit_breaker_open", breaker="ranker_test") == 1.0
    listener("open", "half_open")
    assert sample("recsys_circuit_breaker_open", breaker="ranker_test") == 0.5
    listener("half_open", "closed")
    assert sample("recsys_circuit_breaker_open", breaker="ranker_test") == 0.0


def test_search_events_become_metrics() -> None:
    telemetry = PrometheusTelemetry()
    before = (sample("recsys_search_requests_total", personalised="true", result="empty"),
              sample("recsys_search_typo_corrections_total"),
              sample("recsys_stage_seconds_count", stage="search_bm25"))
    telemetry.event("search", personalised="true", result="empty")
    telemetry.event("search_correction")
    telemetry.observe("search_bm25", 0.0003)
    assert (sample("recsys_search_requests_total", personalised="true", result="empty"),
            sample("recsys_search_typo_corrections_total"),
            sample("recsys_stage_seconds_count", stage="search_bm25")) == \
        tuple(b + 1 for b in before)
