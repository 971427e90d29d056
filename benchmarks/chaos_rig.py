"""What the chaos suite and the soak run against: a durable Redis, the latency proxy in front of
it, a small tmpfs for the shadow log, and `bentoml serve service:Recommender` on 127.0.0.1 with
the services topology and two API workers; plus the checks that the system is whole again.

With `model_source="registry"` the server follows an MLflow tracking server over a copy of the
models' registry instead (the inline topology: what following the registry serves), for the
promotion and the rollback.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx
import psutil
import redis

from benchmarks.chaos_faults import service_pids
from benchmarks.models import BenchModels
from devtools.latency_proxy import LatencyProxy
from devtools.local_redis import LocalRedis, ping
from devtools.processes import ServerProcess, bentoml_serve
from devtools.registry_server import RegistryServer, serve_store_copy, store_db
from recsys.models.registry_client import CHALLENGER, CHAMPION
from registry import ModelSet, Registry

if TYPE_CHECKING:
    from typing_extensions import Self

HISTORY_PREFIX = "recsys:history:"  # recsys/stores/history.py
SERVICES = ("recommender", "RankerService", "UserTowerService")
TMPFS_SIZE = "64m"  # the shadow log's disk: room for a long run, filled on purpose by a fault
READY_TIMEOUT_S = 240.0  # three processes loading models on a busy 2-core machine


@dataclass(frozen=True)
class RigOptions:
    workers: int = 2
    topology: str = "services"
    shadow_fraction: float = 0.1
    # budget, user tower + retrieval, ranking (ms): the services topology's benchmark settings
    timeouts_ms: tuple[float, float, float] = (500.0, 100.0, 300.0)
    history_max_events: int = 100_000  # every accepted event stays countable
    proxy: bool = True  # reach Redis through the latency proxy (for the redis-latency faults)
    # "pinned": the models file's tags; "registry": follow the aliases of a tracking server over
    # a copy of the models' store, polled every registry_poll_s (+-20%); topology "inline" then
    model_source: Literal["pinned", "registry"] = "pinned"
    registry_poll_s: float = 5.0  # the service's default
    logs: str = "logs"  # under the report's directory: the server's, Redis', the samples
    extra_env: Mapping[str, str] = field(default_factory=dict)


# The promotion and the rollback: a server that follows the registry, shadow scoring off (it
# would load the challenger, which the promotion makes the champion).
REGISTRY_OPTIONS = RigOptions(topology="inline", shadow_fraction=0.0, model_source="registry",
                              logs="logs-registry")


def models_file_with_challenger(models: BenchModels, path: Path) -> Path:
    """The champion's tags served as the challenger too: shadow scoring runs on every worker
    without a second model set to train."""
    tags = json.loads(models.models_file.read_text())["champion"]
    path.write_text(json.dumps({"champion": tags, "challenger": tags}, indent=2))
    return path


class ChaosRig:
    """Start with `start()` (or `with`); `server`, `redis`, `proxy` and `shadow_dir` (and
    `registry`, the tracking server, when following one) are then up."""

    def __init__(self, models: BenchModels, out: Path, options: RigOptions | None = None) -> None:
        self.models, self.out = models, out
        self.options = options or RigOptions()
        self.logs = out / self.options.logs
        self.work = Path(tempfile.mkdtemp(prefix="recsys-chaos-"))
        self.redis = LocalRedis(self.work / "redis", durable=True)
        self.shadow_dir = self.work / "shadow"
        self.mounted = False
        self.proxy: LatencyProxy | None = None
        self.server: ServerProcess | None = None
        self.workers: dict[str, int] = {}
        self.registry: RegistryServer | None = None
        self.admin_token = secrets.token_urlsafe(16)
        self.stack = ExitStack()

    def start(self) -> Self:
        try:
            self.logs.mkdir(parents=True, exist_ok=True)
            if self.options.model_source == "registry":
                self.registry = self.stack.enter_context(serve_store_copy(
                    store_db(self.models.tracking_uri), self.work / "registry",
                    self.logs / "mlflow-server.log"))
            self.redis.start()
            if self.options.proxy:
                self.proxy = LatencyProxy(self.redis.port)
            self.shadow_dir.mkdir()
            if self.options.shadow_fraction > 0:  # a tmpfs of its own, to fill up (root only)
                self.mounted = subprocess.call(
                    ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs",
                     str(self.shadow_dir)], stderr=subprocess.DEVNULL) == 0
            self.server = bentoml_serve("service:Recommender", self.env(),
                                        self.logs / "serve.log", name="chaos-recommender",
                                        ready_timeout_s=READY_TIMEOUT_S)
            self.server.start()
            self.workers = {s: len(service_pids(self.server.pid, s)) for s in self.services}
        except BaseException:  # what did start is stopped again
            self.stop()
            raise
        return self

    @property
    def services(self) -> tuple[str, ...]:
        return SERVICES if self.options.topology == "services" else SERVICES[:1]

    @property
    def service_redis_url(self) -> str:
        """Where the service finds Redis: the proxy, or Redis itself without one."""
        if self.proxy is None:
            return self.redis.url
        return f"redis://127.0.0.1:{self.proxy.port}/0"

    def model_sets(self) -> tuple[ModelSet, ModelSet]:
        """The registry's champion and challenger as the run started (promoted in turn)."""
        assert self.registry is not None, "not following a registry"
        registry = Registry(self.registry.url)
        champion, challenger = registry.resolve(CHAMPION), registry.resolve(CHALLENGER)
        if registry.fingerprints(champion) == registry.fingerprints(challenger):
            raise RuntimeError(f"the challenger in {self.models.tracking_uri} holds the "
                               "champion's models: register a second set (benchmarks.models "
                               "--challenger)")
        return champion, challenger

    def env(self) -> dict[str, str]:
        return {**self.pipeline_env(), **self.source_env(), **self.options.extra_env}

    def source_env(self) -> dict[str, str]:
        """Where the models come from: the models file, or the registry (with the admin token
        that the rollback's POST /admin/rollback needs)."""
        if self.registry is None:
            models_file = models_file_with_challenger(self.models, self.work / "models.json")
            return {**self.models.env(), "RECSYS_MODELS_FILE": str(models_file)}
        return {"RECSYS_MODEL_SOURCE": "registry", "RECSYS_REGISTRY_URI": self.registry.url,
                "RECSYS_REGISTRY_POLL_S": f"{self.options.registry_poll_s:g}",
                "RECSYS_MODEL_CACHE_DIR": str(self.work / "model-cache"),
                "RECSYS_ADMIN_TOKEN": self.admin_token}

    def pipeline_env(self) -> dict[str, str]:
        budget, retrieval, ranking = self.options.timeouts_ms
        return {
                "RECSYS_REDIS_URL": self.service_redis_url, "RECSYS_TOPOLOGY": self.options.topology,
                "RECSYS_WORKERS": str(self.options.workers),
                "RECSYS_BUDGET_MS": f"{budget:g}", "RECSYS_TOWER_TIMEOUT_MS": f"{retrieval:g}",
                "RECSYS_RETRIEVAL_TIMEOUT_MS": f"{retrieval:g}",
                "RECSYS_RANKING_TIMEOUT_MS": f"{ranking:g}",
                "RECSYS_RANKING_POLICY": "rank_all",  # every user with history meets the ranker
                "RECSYS_HISTORY_MAX_EVENTS": str(self.options.history_max_events),
                "RECSYS_SHADOW_FRACTION": f"{self.options.shadow_fraction:g}",
                "RECSYS_SHADOW_LOG": str(self.shadow_dir / "shadow.jsonl")}

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.proxy is not None:
            self.proxy.stop()
        self.redis.stop()
        if self.mounted:
            subprocess.call(["umount", "-l", str(self.shadow_dir)])
        self.stack.close()
        if self.redis.log_path.is_file():
            shutil.copyfile(self.redis.log_path, self.logs / "redis.log")
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def item_ids(self) -> list[str]:
        from recsys.models.bundles import EmbeddingBundle
        catalog = EmbeddingBundle.load(self.models.workdir / "embedding").catalog
        return [str(i) for i in catalog.item_ids if str(i)]  # row 0 is padding ("")

    def stored_events(self, users: Iterable[str]) -> set[tuple[str, int]]:
        """(user, timestamp) of every event in the histories of `users`, read from Redis itself."""
        users = sorted(set(users))
        with redis.Redis.from_url(self.redis.url) as client:
            pipe = client.pipeline(transaction=False)
            for user in users:
                pipe.lrange(HISTORY_PREFIX + user, 0, -1)
            lists = pipe.execute()
        return {(user, int(json.loads(entry)["ts"])) for user, entries in zip(users, lists)
                for entry in entries}

    def restored(self) -> dict[str, Any]:
        """Each part of the system as the run started it; `ok` is True when all are."""
        assert self.server is not None
        checks: dict[str, Any] = {"redis_answers": ping(self.redis.port)}
        if checks["redis_answers"]:
            with redis.Redis.from_url(self.redis.url, socket_timeout=2) as client:
                checks["redis_writable"] = bool(client.set("chaos:probe", "1", ex=60))
                checks["redis_maxmemory_off"] = int(client.config_get("maxmemory")["maxmemory"]) \
                    == 0
        if self.proxy is not None:
            checks["proxy_delay_off"] = self.proxy.delay_ms == 0
        try:
            checks["server_ready"] = httpx.get(f"{self.server.url}/readyz",
                                               timeout=10).status_code == 200
        except httpx.HTTPError:
            checks["server_ready"] = False
        now = {s: service_pids(self.server.pid, s) for s in self.services}
        checks["workers"] = {s: len(p) for s, p in now.items()}
        checks["workers_as_started"] = checks["workers"] == self.workers
        checks["none_stopped"] = not any(_stopped(pid) for pids in now.values() for pid in pids)
        if self.mounted:
            usage = shutil.disk_usage(self.shadow_dir)
            checks["shadow_disk_free"] = usage.free > usage.total // 2
        checks["ok"] = all(v for k, v in checks.items() if isinstance(v, bool))
        return checks

    def redis_used_memory(self) -> int:
        with redis.Redis.from_url(self.redis.url, socket_timeout=2) as client:
            return int(client.info("memory")["used_memory"])


def _stopped(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except psutil.NoSuchProcess:
        return False


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]
