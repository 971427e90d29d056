"""A real MLflow tracking server over a copy of a registry's sqlite store, for the tests and the
benchmarks that serve from the registry and move its aliases without touching the store they
copied (the bundles it names are read where training wrote them)."""
from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devtools.processes import ServerProcess
from registry import Registry

SQLITE = "sqlite:///"


@dataclass(frozen=True)
class RegistryServer:
    url: str  # what serving reads: http://127.0.0.1:<port>
    store_uri: str  # the same store, for writing: sqlite:///...
    artifacts: Path  # where the server keeps artifacts logged through it

    def registry(self) -> Registry:
        return Registry(self.store_uri)


def store_db(tracking_uri: str) -> Path:
    """The database file of a `sqlite:///` tracking URI (ValueError for any other store)."""
    if not tracking_uri.startswith(SQLITE):
        raise ValueError(f"expected a sqlite:/// tracking URI, got {tracking_uri!r}")
    return Path(tracking_uri.removeprefix(SQLITE).split("?")[0])


def mlflow_server(store_db: Path, artifacts: Path, log_path: Path) -> ServerProcess:
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
               f"sqlite:///{store_db}", "--host", "127.0.0.1", "--port", "{port}", "--workers",
               "1", "--serve-artifacts", "--artifacts-destination", str(artifacts)]
    return ServerProcess("mlflow server", command, {}, log_path, ready_path="/health",
                         ready_timeout_s=120)


@contextmanager
def serve_store_copy(source_db: Path, directory: Path,
                     log_path: Path | None = None) -> Iterator[RegistryServer]:
    """A tracking server over a copy of `source_db` made in `directory`: alias moves stay in the
    copy. Its log goes to `log_path` (default: `directory`/mlflow-server.log)."""
    directory.mkdir(parents=True, exist_ok=True)
    copy = directory / "mlruns.db"
    shutil.copyfile(source_db, copy)
    artifacts = directory / "served-artifacts"
    log_path = log_path or directory / "mlflow-server.log"
    with mlflow_server(copy, artifacts, log_path) as server:
        yield RegistryServer(server.url, f"{SQLITE}{copy}", artifacts)
