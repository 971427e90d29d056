"""Request tracing: whether BentoML's OpenTelemetry middleware handles this service's requests.

BentoML wraps every request of every service in an OpenTelemetry server span, with a span for
each message received and sent, whether or not a trace is ever exported (its default sample rate
is 0 and no exporter is set). A 1-worker service spent 6.59 ms of CPU per /recommend cache miss
with them and 5.02 without, side by side (README, Serving performance). Unless
RECSYS_TRACE_REQUESTS is true, the services defined here leave every route out of it (BentoML's
`tracing.excluded_urls`); the access log then shows no trace id, and the answer's `request_id`
is the request's own id. Whoever turns on a trace exporter turns this on too; `warn_if_untraced`
says so at start-up when only the first was done.
"""
from __future__ import annotations

import logging
from typing import Any

from recsys.settings import ServingSettings

log = logging.getLogger(__name__)
EVERY_ROUTE = "."  # excluded_urls are regular expressions searched for in each request's URL


def service_tracing(settings: ServingSettings) -> dict[str, Any]:
    """The `tracing` configuration of a BentoML service under `settings`."""
    return {} if settings.trace_requests else {"excluded_urls": [EVERY_ROUTE]}


def configured_exporter() -> str | None:
    """The trace exporter BentoML's configuration names (BENTOML_CONFIG, the service's own), or
    None. Read after BentoML has loaded it: at start-up, not at import."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    exporter = BentoMLContainer.tracing.exporter_type.get()
    return str(exporter) if exporter else None


def warn_if_untraced(settings: ServingSettings, exporter: str | None = None) -> bool:
    """Log a warning when a trace exporter is configured but the requests are left out of
    tracing; returns whether it warned. `exporter` None: the one BentoML's configuration names."""
    if settings.trace_requests:
        return False
    exporter = exporter if exporter is not None else configured_exporter()
    if exporter is None:
        return False
    log.warning("BentoML's tracing exports to %s, but RECSYS_TRACE_REQUESTS is false: no request "
                "of this service is traced. Set RECSYS_TRACE_REQUESTS=true to trace them.",
                exporter)
    return True
