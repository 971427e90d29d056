"""The series the service serves on /metrics, with their label names, known without running
it: the prometheus_client metrics defined in recsys/ and serving/, and the request metrics
BentoML's middleware declares around a new-style service (and the adaptive batching histogram of
its batched APIs). The monitoring tests hold the rules and the dashboard to it, the Kubernetes
tests the autoscaler's metric; a slow test holds it to a real `bentoml serve`'s /metrics."""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

import yaml

Catalogue = dict[str, frozenset[str]]  # series name -> its label names


def series_of(kind: str, name: str, labels: frozenset[str]) -> Catalogue:
    """The series one metric family is served as, each with its label names."""
    if kind == "counter":
        return {f"{name.removesuffix('_total')}_total": labels}
    if kind == "histogram":
        return {f"{name}_bucket": labels | {"le"}, f"{name}_count": labels,
                f"{name}_sum": labels}
    if kind == "summary":
        return {name: labels | {"quantile"}, f"{name}_count": labels, f"{name}_sum": labels}
    return {name: labels}


def served_labels(kind: str, labelnames: list[str], multiprocess_mode: str) -> frozenset[str]:
    # Gauges aggregated "all" or "liveall" over worker processes keep one series per worker.
    per_worker = kind == "gauge" and multiprocess_mode in ("all", "liveall")
    return frozenset(labelnames) | ({"pid"} if per_worker else set())


def runtime_series() -> Catalogue:
    """Every prometheus_client metric defined at module level in recsys/ and serving/."""
    from prometheus_client.metrics import MetricWrapperBase

    catalogue: Catalogue = {}
    for package_name in ("recsys", "serving"):
        package = importlib.import_module(package_name)
        for module_info in pkgutil.walk_packages(package.__path__, f"{package_name}."):
            module = importlib.import_module(module_info.name)
            for value in vars(module).values():
                if isinstance(value, MetricWrapperBase):
                    kind = value._type  # prometheus_client keeps no public accessor for these
                    labels = served_labels(kind, list(value._labelnames),
                                           getattr(value, "_multiprocess_mode", ""))
                    for family in value.describe():
                        catalogue |= series_of(kind, family.name, labels)
    return catalogue


class DeclaredMetrics:
    """Stands in for BentoML's metrics client: each metric BentoML declares on it is recorded
    with the series it is served as."""

    def __init__(self) -> None:
        self.catalogue: Catalogue = {}

    def declare(self, kind: str, namespace: str, name: str, labelnames: list[str],
                multiprocess_mode: str = "all", **_: Any) -> None:
        labels = served_labels(kind, labelnames, multiprocess_mode)
        self.catalogue |= series_of(kind, f"{namespace}_{name}", labels)

    def Counter(self, **kwargs: Any) -> None:
        self.declare("counter", **kwargs)

    def Gauge(self, **kwargs: Any) -> None:
        self.declare("gauge", **kwargs)

    def Histogram(self, **kwargs: Any) -> None:
        self.declare("histogram", **kwargs)

    def Summary(self, **kwargs: Any) -> None:
        self.declare("summary", **kwargs)


def bentoml_series() -> Catalogue:
    """The request metrics BentoML's middleware declares around a new-style service, and the
    adaptive batching histogram of its batched APIs (the model services)."""
    import bentoml
    from _bentoml_impl.server.app import ServiceAppFactory
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    # `bentoml serve` of service.py runs on the v2 (new-style service) configuration
    defaults = Path(bentoml.__file__).parent / "_internal/configuration/v2/default_configuration.yaml"
    namespace = yaml.safe_load(defaults.read_text())["services"]["metrics"]["namespace"]
    declared = DeclaredMetrics()
    RunnerTrafficMetricsMiddleware(None, namespace=namespace)._setup(
        metrics_client=declared, duration_buckets=(1.0,))
    batched_service = type("Batched", (), {"service": type("Service", (), {"apis": {}})()})()
    with BentoMLContainer.metrics_client.patch(declared):
        ServiceAppFactory.adaptive_batch_size_hist.func(batched_service)
    return declared.catalogue
