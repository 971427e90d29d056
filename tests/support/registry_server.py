"""A real MLflow tracking server over a copy of the trained models' store, for the tests that
serve from the registry (and move its aliases without touching other tests' store)."""
from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devtools.processes import ServerProcess
from registry import Registry
from tests.support.fixtures_models import TrainedModels


@dataclass(frozen=True)
class RegistryServer:
    url: str  # what serving reads: http://127.0.0.1:<port>
    store_uri: str  # the same store, for writing: sqlite:///...
    artifacts: Path  # where the server keeps artifacts logged through it

    def registry(self) -> Registry:
        return Registry(self.store_uri)


def mlflow_server(store_db: Path, artifacts: Path, log_path: Path) -> ServerProcess:
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
               f"sqlite:///{store_db}", "--host", "127.0.0.1", "--port", "{port}", "--workers",
               "1", "--serve-artifacts", "--artifacts-destination", str(artifacts)]
    return ServerProcess("mlflow server", command, {}, log_path, ready_path="/health",
                         ready_timeout_s=120)


@contextmanager
def registry_copy(models: TrainedModels, directory: Path) -> Iterator[RegistryServer]:
    """A server over a copy of `models`' sqlite store: alias moves stay in the copy (the bundles
    it names are read where training wrote them)."""
    directory.mkdir(parents=True, exist_ok=True)
    store_db = directory / "mlruns.db"
    shutil.copyfile(models.root / "mlstore" / "mlruns.db", store_db)
    artifacts = directory / "served-artifacts"
    with mlflow_server(store_db, artifacts, directory / "mlflow-server.log") as server:
        yield RegistryServer(server.url, f"sqlite:///{store_db}", artifacts)
