"""N replicas of the recommender (`bentoml serve service:Recommender`, each on its own port) that
share one Redis, behind HAProxy on one port.

    python -m devtools.replicas --replicas 3 --port 8080     # or: bash scripts/replicas.sh ...

Every replica serves what the environment says (RECSYS_MODELS_FILE's pinned tags, or the
registry's aliases with RECSYS_MODEL_SOURCE=registry and RECSYS_REGISTRY_URI), with
RECSYS_WORKERS API workers (1 by default: one process a replica, as a container would run).
RECSYS_REDIS_URL names the shared Redis; without it a local redis-server is started here.

Each replica gets its own BentoML home (its entries linked to the shared one's): `bentoml serve`
empties `$BENTOML_HOME/prometheus_multiproc_dir` when it starts and its /metrics reads every
file in there, so replicas sharing one home would wipe and mix each other's metrics.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from devtools.haproxy import Backend, BalancerConfig, LoadBalancer
from devtools.local_redis import LocalRedis, free_port, server_pid
from devtools.processes import (
    QUIET_ENV,
    READY_TIMEOUT_S,
    REPO_ROOT,
    ServerProcess,
    bentoml_serve,
    process_tree,
)

if TYPE_CHECKING:
    from typing_extensions import Self

PROMETHEUS_DIR = "prometheus_multiproc_dir"


def replica_home(shared: Path, own: Path) -> Path:
    """A BentoML home for one replica: links to every entry of `shared` but the Prometheus
    directory, which stays the replica's own."""
    own.mkdir(parents=True, exist_ok=True)
    if shared.is_dir():
        for entry in shared.iterdir():
            link = own / entry.name
            if entry.name != PROMETHEUS_DIR and not link.exists():
                link.symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    return own


class ReplicaSet:
    """`count` replicas on free ports of 127.0.0.1, one Redis, HAProxy on `port`.

    `env` is every replica's environment (models, settings) on top of this process's; the set
    adds RECSYS_REDIS_URL, RECSYS_WORKERS, RECSYS_CLIENT_ADDRESS_HEADER (unless `env` has it)
    and a replica's own BentoML home and model cache.
    Replicas are named r1 ... rN, in HAProxy and in `replicas`.
    """

    def __init__(self, count: int, env: Mapping[str, str], directory: Path, *,
                 redis_url: str | None = None, workers: int = 1, port: int | None = None,
                 host: str = "127.0.0.1", ready_timeout_s: float = READY_TIMEOUT_S,
                 balancer_options: Mapping[str, Any] | None = None) -> None:
        if count < 1:
            raise ValueError(f"a replica set needs at least one replica, got {count}")
        self.directory = directory.resolve()
        self.redis = None if redis_url else LocalRedis(self.directory / "redis")
        self._redis_url = redis_url
        # The per-client limits count the address HAProxy forwards, not HAProxy's own.
        self.env = {**QUIET_ENV, "RECSYS_CLIENT_ADDRESS_HEADER": "x-forwarded-for", **env,
                    "RECSYS_WORKERS": str(workers)}
        shared_home = self.env.get("BENTOML_HOME") or os.environ.get("BENTOML_HOME")
        self.shared_home = Path(shared_home) if shared_home else Path.home() / "bentoml"
        self.replicas = [self._replica(n, ready_timeout_s) for n in range(1, count + 1)]
        backends = tuple(Backend(r.name, r.port) for r in self.replicas)
        config = BalancerConfig(backends, self.directory / "haproxy" / "admin.sock",
                                port=port or free_port(), host=host,
                                **(balancer_options or {}))
        self.balancer = LoadBalancer(config, self.directory / "haproxy")
        self._stack = ExitStack()

    def _replica(self, number: int, ready_timeout_s: float) -> ServerProcess:
        own = self.directory / f"r{number}"
        env = {"RECSYS_MODEL_CACHE_DIR": str(own / "model-cache"),
               "BENTOML_HOME": str(own / "bentoml-home")}
        return bentoml_serve("service:Recommender", {**self.env, **env}, own / "serve.log",
                             name=f"r{number}", ready_timeout_s=ready_timeout_s)

    @property
    def url(self) -> str:
        return self.balancer.url

    @property
    def redis_url(self) -> str:
        if self._redis_url:
            return self._redis_url
        assert self.redis is not None
        return self.redis.url

    def start(self) -> Self:
        """Redis, then every replica (launched together, each waited for), then HAProxy."""
        try:
            if self.redis is not None:
                self._stack.enter_context(self.redis)
            for replica in self.replicas:
                self._prepare(replica)
                self._stack.callback(replica.stop)
                replica.launch()
            for replica in self.replicas:
                replica.wait_ready()
            self._stack.callback(self.balancer.stop)
            self.balancer.start()
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare(self, replica: ServerProcess) -> None:
        replica.env["RECSYS_REDIS_URL"] = self.redis_url
        replica_home(self.shared_home, Path(replica.env["BENTOML_HOME"]))

    def replica(self, name: str) -> ServerProcess:
        return next(r for r in self.replicas if r.name == name)

    def kill(self, name: str) -> None:
        """SIGKILL every process of the replica at once, as a crashed host or container would.

        Not just the process group: BentoML starts each worker in a session of its own, so a
        worker outlives a killed supervisor and goes on answering on the inherited socket.
        """
        replica = self.replica(name)
        if replica.process is None:
            return
        tree = process_tree(replica.process.pid)
        for member in tree:
            try:
                member.kill()  # SIGKILL
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(tree, timeout=10)
        replica.process.wait(10)
        replica.process = None

    def restart(self, name: str) -> None:
        """Start a stopped or killed replica again on its port, and wait until it is ready."""
        replica = self.replica(name)
        replica.stop()
        replica.start()

    def stop(self) -> None:
        self._stack.close()

    def pids(self) -> list[int]:
        """Root pids of the replicas, HAProxy and the Redis started here (CPU accounting)."""
        servers = [*self.replicas, self.balancer.process]
        pids = [s.pid for s in servers if s.process is not None]
        redis_pid = server_pid(self.redis.port) if self.redis is not None else None
        return pids if redis_pid is None else [*pids, redis_pid]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")),
                        help="HAProxy's port (the replicas take free ports)")
    parser.add_argument("--host", default="127.0.0.1", help="HAProxy's address")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("RECSYS_WORKERS", "1")),
                        help="API workers per replica")
    parser.add_argument("--run-dir", type=Path, default=REPO_ROOT / ".run" / "replicas",
                        help="logs, the rendered haproxy.cfg and a local Redis's data")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    replicas = ReplicaSet(args.replicas, env, args.run_dir, redis_url=env.get("RECSYS_REDIS_URL"),
                          workers=args.workers, port=args.port, host=args.host)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    with replicas:
        config = replicas.balancer.config
        print(f"==> {args.replicas} replicas ({', '.join(r.url for r in replicas.replicas)}) "
              f"behind HAProxy at {replicas.url}; Redis {replicas.redis_url}", flush=True)
        print(f"==> HAProxy stats {config.stats_url}/stats, Prometheus {config.stats_url}/metrics, "
              f"admin socket {config.stats_socket}; logs in {args.run_dir}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
