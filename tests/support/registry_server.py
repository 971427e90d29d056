"""A real MLflow tracking server over a copy of the trained models' store, for the tests that
serve from the registry (and move its aliases without touching other tests' store); the server
itself is devtools/registry_server.py, which the benchmarks share."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devtools.registry_server import RegistryServer, mlflow_server, serve_store_copy
from tests.support.fixtures_models import TrainedModels

__all__ = ["RegistryServer", "mlflow_server", "registry_copy"]


@contextmanager
def registry_copy(models: TrainedModels, directory: Path) -> Iterator[RegistryServer]:
    """A server over a copy of `models`' sqlite store: alias moves stay in the copy (the bundles
    it names are read where training wrote them)."""
    with serve_store_copy(models.root / "mlstore" / "mlruns.db", directory) as server:
        yield server
