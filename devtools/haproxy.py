"""HAProxy in front of service replicas: its configuration rendered from
deploy/haproxy/haproxy.cfg.template, the process run on 127.0.0.1, and its stats read back.

Debian's `haproxy` package is installed (apt-get, as root) when no binary is found, as the
project's scripts install what else they need.
"""
from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Literal

import httpx

from devtools.local_redis import free_port
from devtools.processes import REPO_ROOT, ServerProcess

if TYPE_CHECKING:
    from typing_extensions import Self

TEMPLATE = REPO_ROOT / "deploy" / "haproxy" / "haproxy.cfg.template"
BACKEND = "replicas"  # the backend's name in the template
# The APIs that only read (a cache write aside): safe to replay on another replica.
READ_ONLY_PATHS = ("/recommend", "/similar_items", "/rank", "/info")
INSTALL_TIMEOUT_S = 300.0
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class HaproxyError(RuntimeError):
    """No haproxy binary (and none could be installed), or a configuration it refuses."""


def find_haproxy(install: bool = True) -> str:
    """Path of the haproxy binary; installs Debian's package when missing, `install` is true and
    this process runs as root."""
    for candidate in (shutil.which("haproxy"), "/usr/sbin/haproxy"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    if not install or os.geteuid() != 0:
        raise HaproxyError("no haproxy found; install Debian's package as root: "
                           "apt-get install -y haproxy")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "haproxy"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False,
                              timeout=INSTALL_TIMEOUT_S)
        if done.returncode != 0:
            raise HaproxyError(f"{' '.join(command)} failed ({done.returncode}): "
                               f"{(done.stdout + done.stderr)[-1500:]}")
    return find_haproxy(install=False)


def haproxy_version(executable: str) -> str:
    done = subprocess.run([executable, "-v"], capture_output=True, text=True, check=False,
                          timeout=10)
    return done.stdout.splitlines()[0].strip() if done.stdout else "unknown"


@dataclass(frozen=True)
class Backend:
    """One replica as HAProxy sees it: a server name and where it listens."""

    name: str
    port: int
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class BalancerConfig:
    """What the template needs. Times are in the unit their name says; `fall` failed checks mark
    a replica down, `rise` passed ones bring it back; `retries` replays go to other replicas."""

    servers: tuple[Backend, ...]
    stats_socket: Path
    port: int = field(default_factory=free_port)
    stats_port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    threads: int = 1
    maxconn: int = 2048
    server_maxconn: int = 8  # requests in flight per replica; the rest queue in HAProxy
    bufsize_bytes: int = 65536  # two per connection in use: the largest request a retry replays
    check_interval_ms: int = 500
    fast_interval_ms: int = 250  # while a replica is going down or coming up
    down_interval_ms: int = 1000  # while it is down
    fall: int = 2
    rise: int = 2
    retries: int = 2
    connect_timeout_ms: int = 1000
    check_timeout_ms: int = 2000
    client_timeout_s: float = 30.0
    server_timeout_s: float = 15.0
    http_request_timeout_s: float = 10.0
    keep_alive_timeout_s: float = 10.0
    queue_timeout_s: float = 5.0
    read_only_paths: tuple[str, ...] = READ_ONLY_PATHS
    balance: Literal["leastconn", "user"] = "leastconn"
    hash_balance_factor: int = 125  # "user": no replica above this % of the mean load

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("servers: a load balancer needs at least one")
        names = [s.name for s in self.servers]
        bad = [n for n in names if not _NAME.match(n)]
        if bad or len(set(names)) != len(names):
            raise ValueError(f"servers: names must be unique and [A-Za-z0-9_.-]+, got {names}")
        for name in ("threads", "maxconn", "server_maxconn", "fall", "rise", "check_interval_ms",
                     "bufsize_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.balance not in ("user", "leastconn"):
            raise ValueError(f"balance must be 'leastconn' or 'user', got {self.balance!r}")
        if self.hash_balance_factor <= 100:
            raise ValueError(f"hash_balance_factor must be > 100 (%), got {self.hash_balance_factor}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if not all(p.startswith("/") and " " not in p for p in self.read_only_paths):
            raise ValueError(f"read_only_paths must be paths, got {self.read_only_paths}")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def stats_url(self) -> str:
        return f"http://{self.host}:{self.stats_port}"


def render(config: BalancerConfig, template: Path = TEMPLATE) -> str:
    """The HAProxy configuration text for `config`."""
    servers = "\n".join(f"    server {s.name} {s.host}:{s.port}" for s in config.servers)
    values = {name: getattr(config, name) for name in (
        "host", "port", "stats_port", "threads", "maxconn", "server_maxconn", "bufsize_bytes",
        "check_interval_ms", "fast_interval_ms", "down_interval_ms", "fall", "rise", "retries",
        "connect_timeout_ms", "check_timeout_ms")}
    seconds = {name: f"{getattr(config, name):g}" for name in (
        "client_timeout_s", "server_timeout_s", "http_request_timeout_s", "keep_alive_timeout_s",
        "queue_timeout_s")}
    return Template(template.read_text()).substitute(
        values, **seconds, servers=servers, stats_socket=str(config.stats_socket),
        read_only_paths=" ".join(config.read_only_paths), balance=balance_lines(config))


def balance_lines(config: BalancerConfig) -> str:
    if config.balance == "leastconn":
        return "    balance leastconn"
    return ("    balance hash req.body,json_query('$.user_id')\n    hash-type consistent\n"
            f"    hash-balance-factor {config.hash_balance_factor}")


def check_config(executable: str, path: Path) -> None:
    """`haproxy -c`: HaproxyError with HAProxy's own words when it refuses the file."""
    done = subprocess.run([executable, "-c", "-f", str(path)], capture_output=True, text=True,
                          check=False, timeout=30)
    if done.returncode != 0:
        raise HaproxyError(f"haproxy refuses {path}:\n{(done.stdout + done.stderr)[-3000:]}")


class LoadBalancer:
    """HAProxy in the foreground (`-db`), configured from `config` in `directory`. Ready when a
    request to /readyz through it answers 200, that is, when a replica is up behind it."""

    def __init__(self, config: BalancerConfig, directory: Path, *,
                 executable: str | None = None, ready_timeout_s: float = 30.0) -> None:
        self.config, self.directory = config, directory
        self.executable = executable or find_haproxy()
        self.config_path = directory / "haproxy.cfg"
        self.process = ServerProcess(
            "haproxy", [self.executable, "-db", "-f", str(self.config_path)], {},
            directory / "haproxy.log", port=config.port, ready_timeout_s=ready_timeout_s)

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self) -> Self:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(render(self.config))
        check_config(self.executable, self.config_path)
        self.process.start()
        return self

    def stop(self) -> None:
        self.process.stop()

    def log_tail(self, lines: int = 80) -> str:
        return self.process.log_tail(lines)

    def stats(self) -> list[dict[str, str]]:
        """HAProxy's stats CSV: one dict per frontend, backend and server (columns as named in
        HAProxy's management guide: pxname, svname, status, stot, wretr, wredis, hrsp_5xx...)."""
        response = httpx.get(f"{self.config.stats_url}/stats;csv", timeout=5.0)
        response.raise_for_status()
        text = response.text.removeprefix("# ")
        return list(csv.DictReader(text.splitlines()))

    def server_states(self) -> dict[str, str]:
        """Replica name -> HAProxy's status for it ("UP", "DOWN", "UP 1/2", "DOWN 1/2", ...)."""
        return {row["svname"]: row["status"] for row in self.stats()
                if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")}

    def counters(self, name: str = "BACKEND") -> dict[str, int]:
        """The numeric counters of the backend (or of one replica, by name)."""
        row = next(r for r in self.stats() if r["pxname"] == BACKEND and r["svname"] == name)
        return {k: int(v) for k, v in row.items() if k and v and v.isdigit()}

    def metrics(self) -> str:
        """HAProxy's Prometheus exporter (the stats frontend's /metrics)."""
        return httpx.get(f"{self.config.stats_url}/metrics", timeout=5.0).text

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
