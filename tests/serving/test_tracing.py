"""RECSYS_TRACE_REQUESTS as the services read it: every route left out of BentoML's
OpenTelemetry middleware unless it is true, and a warning when an exporter is configured for
requests that are not traced. The services' own access logs are checked in
tests/e2e/test_service_topology.py."""
from __future__ import annotations

import logging

import pytest
from opentelemetry.util.http import ExcludeList

from recsys.settings import ServingSettings
from serving.tracing import configured_exporter, service_tracing, warn_if_untraced

URLS = ("http://127.0.0.1:3000/recommend", "http://10.0.0.7:3000/search?q=x", "http://h/events",
        "http://h/admin/canary", "http://h/metrics", "http://h/readyz",
        "http://h/encode_champion", "http://h/score_challenger")


def test_by_default_every_route_is_left_out_of_tracing() -> None:
    config = service_tracing(ServingSettings())
    excluded = ExcludeList(config["excluded_urls"])  # what BentoML builds from a list
    assert all(excluded.url_disabled(url) for url in URLS)


def test_traced_requests_leave_bentoml_s_tracing_configuration_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_TRACE_REQUESTS", "true")
    assert service_tracing(ServingSettings()) == {}


def test_an_exporter_for_untraced_requests_is_named_in_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="serving.tracing"):
        assert warn_if_untraced(ServingSettings(), exporter="otlp")
    assert "exports to otlp" in caplog.text and "RECSYS_TRACE_REQUESTS=true" in caplog.text
    caplog.clear()
    assert not warn_if_untraced(ServingSettings(trace_requests=True), exporter="otlp")
    assert not warn_if_untraced(ServingSettings(), exporter=None)
    assert not caplog.text


def test_bentoml_s_default_configuration_names_no_exporter() -> None:
    assert configured_exporter() is None  # read through BentoML's own configuration container
