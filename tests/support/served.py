"""A `bentoml serve` of service.py over the trained test models and the session's Redis (emptied
first), with the relaxed stage timeouts of a busy test machine: what the API and the monitoring
tests run against."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from devtools.local_redis import LocalRedis
from devtools.processes import ServerProcess, bentoml_serve
from tests.support.fixtures_models import TrainedModels
from tests.support.http import RELAXED_LATENCY


@contextmanager
def served_with_redis(trained_models: TrainedModels, redis_server: LocalRedis,
                      log_dir: Path) -> Iterator[ServerProcess]:
    redis_server.start()  # a module before may have stopped it
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    env = {**trained_models.env(), **RELAXED_LATENCY, "RECSYS_REDIS_URL": redis_server.url}
    with bentoml_serve("service:Recommender", env, log_dir / "serve.log") as process:
        yield process
