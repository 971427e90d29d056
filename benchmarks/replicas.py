"""Throughput of the service through HAProxy with 1, 2, 3 ... replicas on this machine; writes
reports/<UTC timestamp>-replicas/ (results.json, report.md, plots).

    python -m benchmarks.replicas --replicas 1 2 3
    python -m benchmarks.replicas --replicas 1 2 --items 10000 --repeats 1 --duration 3

Each replica is `bentoml serve service:Recommender` with one API worker (devtools/replicas.py);
each replica count is a set of its own (its replicas, one Redis, HAProxy in front:
deploy/haproxy/), and all sets start together and stay up, so that the runs can be interleaved:
every repeat, concurrency and set in turn, as the suite's peers phase does, so a drift in the
machine's background load reaches every replica count alike. wrk drives cache misses (distinct
users, hours and devices: recommend.lua's distinct mode) through HAProxy at each concurrency;
with one replica the same replica is also driven directly, without HAProxy, to show what the
load balancer costs. Models: the benchmark suite's (benchmarks/models.py,
cached by code fingerprint).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import machine, replicas_report
from benchmarks.load import LoadError, LoadResult, LoadSpec, run_wrk, wrk_version
from benchmarks.models import BenchModels, code_fingerprint, default_cache_root, ensure_models
from devtools.haproxy import find_haproxy, haproxy_version
from devtools.processes import QUIET_ENV, REPO_ROOT
from devtools.replicas import ReplicaSet
from training.config import TwoTowerConfig


@dataclass(frozen=True)
class ReplicaBenchSettings:
    replicas: tuple[int, ...] = (1, 2, 3)
    items: int = 100_000  # the catalogue of the suite's peer comparison
    users: int = 1000
    epochs: int = TwoTowerConfig().epochs
    concurrencies: tuple[int, ...] = (1, 4, 8, 16, 32, 64)
    fixed_concurrency: int = 16  # the table's "at a fixed concurrency" column
    duration_s: float = 5.0
    warmup_s: float = 1.5
    repeats: int = 2
    max_requests: int = 20_000
    timeout_s: float = 5.0
    slo_p99_ms: float = 100.0
    balance: tuple[str, ...] = ("leastconn",)  # HAProxy's balance modes (leastconn, user)
    workers: int = 1  # API workers per replica


class Bench:
    """One run: output directory, progress log, fresh request numbers per target."""

    def __init__(self, out: Path, settings: ReplicaBenchSettings, users_file: Path) -> None:
        self.out, self.settings, self.users_file = out, settings, users_file
        self.offsets: dict[str, int] = {}
        self.progress: list[str] = []

    def log(self, message: str) -> None:
        print(message, flush=True)
        self.progress.append(message)

    def measure(self, target: str, url: str, connections: int, pids: list[int], repeat: int,
                cache: str) -> LoadResult:
        """A discarded warm-up (other keys: k + 1), then the measured run of cache misses.
        `cache` names the Redis and replicas the run reaches: request numbers never repeat
        within one, whichever target (through HAProxy or direct) used them."""
        s = self.settings
        offset = self.offsets.get(cache, 0)
        spec = LoadSpec(url, self.users_file, connections, s.duration_s, mode="distinct",
                        offset=offset, max_requests=s.max_requests, timeout_s=s.timeout_s,
                        seed=repeat + 1)
        if s.warmup_s > 0:
            run_wrk(target, replace(spec, duration_s=s.warmup_s, max_requests=0, k=spec.k + 1),
                    pids)
        result = run_wrk(target, spec, pids)
        self.offsets[cache] = offset + result.requests + connections
        result.extra = {**result.extra, "repeat": repeat, "load_average": os.getloadavg()[0]}
        haproxy = cores_of(result.cpu["server_cores_by_process"], "haproxy")
        redis = cores_of(result.cpu["server_cores_by_process"], "redis-server")
        self.log(f"  {target:<16} c={connections:<3} {result.rps:8.1f} req/s  p50 "
                 f"{result.latency_ms['p50']:7.2f}  p99 {result.latency_ms['p99']:7.2f} ms  "
                 f"non-2xx {result.non_2xx}  cores: service "
                 f"{result.cpu['server_cores'] - haproxy - redis:.2f} haproxy {haproxy:.2f} redis "
                 f"{redis:.2f} wrk {result.cpu['client_cores']:.2f} other "
                 f"{result.cpu['other_cores']:.2f}")
        return result


def cores_of(by_process: dict[str, float], program: str) -> float:
    """Cores used by the processes whose label starts with `program` (redis-server names
    itself "redis-server host:port")."""
    return round(sum(v for k, v in by_process.items() if k.startswith(program)), 3)


def replica_env(models: BenchModels) -> dict[str, str]:
    return {**models.env(), **QUIET_ENV, "RECSYS_TOPOLOGY": "inline",
            "RECSYS_SHADOW_FRACTION": "0"}


@dataclass
class BenchSet:
    """One replica count and balance mode: its running replica set and the runs through it."""

    name: str
    count: int
    balance: str
    replicas: ReplicaSet
    startup_s: float
    direct: bool  # also drive replica r1 without HAProxy
    runs: list[dict[str, Any]] = field(default_factory=list)

    def targets(self) -> list[tuple[str, str, str]]:
        """(target, url, via) of every wrk run against this set."""
        out = [(f"haproxy-{self.name}", self.replicas.url, "haproxy")]
        return out + [("direct-1x", self.replicas.replicas[0].url, "direct")] if self.direct \
            else out

    def summary(self) -> dict[str, Any]:
        balancer = self.replicas.balancer
        backend = balancer.counters()
        return {"replicas": self.count, "balance": self.balance, "startup_s": self.startup_s,
                "runs": self.runs,
                "served_by_replica": {r.name: balancer.counters(r.name).get("stot", 0)
                                      for r in self.replicas.replicas},
                "haproxy": {k: backend.get(k, 0) for k in (
                    "stot", "wretr", "wredis", "hrsp_2xx", "hrsp_4xx", "hrsp_5xx", "econ",
                    "eresp")}}


def start_sets(bench: Bench, models: BenchModels, stack: ExitStack) -> list[BenchSet]:
    """Every replica count (per balance mode) started at once, each with its own Redis: they
    stay up, idle but for health checks, while the others are measured."""
    s = bench.settings
    wanted = [(count, balance) for balance in s.balance for count in s.replicas
              if balance == s.balance[0] or count > 1]  # one replica: the mode changes nothing
    started = time.perf_counter()
    pending = []
    for count, balance in wanted:
        name = f"{count}x{'' if balance == 'leastconn' else '-' + balance}"
        replicas = stack.enter_context(ReplicaSet(
            count, replica_env(models), bench.out / "logs" / name, workers=s.workers,
            ready_timeout_s=600, balancer_options={"balance": balance}))
        pending.append(BenchSet(name, count, balance, replicas, 0.0,
                                direct=count == 1 and balance == s.balance[0]))
    startup = round(time.perf_counter() - started, 1)
    for each in pending:
        each.startup_s = startup
    bench.log(f"{sum(c for c, _ in wanted)} replicas in {len(wanted)} sets ready in {startup} s "
              f"(started together); load average {os.getloadavg()[0]:.2f}")
    return pending


def measure_sets(bench: Bench, sets: list[BenchSet]) -> None:
    """Every repeat, every concurrency, every set and target in turn: a drift in the machine's
    background load reaches every replica count alike."""
    s = bench.settings
    for repeat in range(s.repeats):
        bench.log(f"repeat {repeat + 1}/{s.repeats}")
        for connections in s.concurrencies:
            for each in sets:
                for target, url, via in each.targets():
                    result = bench.measure(target, url, connections, each.replicas.pids(),
                                           repeat, cache=each.name)
                    each.runs.append({**result.as_dict(), "replicas": each.count,
                                      "balance": each.balance, "via": via})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--items", type=int, default=ReplicaBenchSettings.items)
    parser.add_argument("--epochs", type=int, default=ReplicaBenchSettings.epochs)
    parser.add_argument("--concurrencies", type=int, nargs="+")
    parser.add_argument("--repeats", type=int, default=ReplicaBenchSettings.repeats)
    parser.add_argument("--duration", type=float, default=ReplicaBenchSettings.duration_s)
    parser.add_argument("--balance", nargs="+", choices=("leastconn", "user"),
                        default=["leastconn"],
                        help="HAProxy balance modes to measure (each replica count with each)")
    parser.add_argument("--out", type=Path, help="default reports/<UTC timestamp>-replicas")
    parser.add_argument("--models-dir", type=Path,
                        help="trained models (default: the suite's cache for this code)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(QUIET_ENV)
    settings = ReplicaBenchSettings(
        replicas=tuple(args.replicas), items=args.items, epochs=args.epochs,
        repeats=args.repeats, duration_s=args.duration, balance=tuple(args.balance))
    if args.concurrencies:
        settings = replace(settings, concurrencies=tuple(args.concurrencies))
    try:
        wrk = wrk_version()
    except LoadError as error:
        print(error, file=sys.stderr)
        return 2
    haproxy = haproxy_version(find_haproxy())
    started = datetime.now(timezone.utc)
    out = args.out or REPO_ROOT / "reports" / (started.strftime("%Y%m%d-%H%M%S") + "-replicas")
    out.mkdir(parents=True, exist_ok=True)
    description = machine.describe()
    root = args.models_dir or default_cache_root() / code_fingerprint() / \
        f"{settings.items}-u{settings.users}-e{settings.epochs}"
    users_file = out / "users.txt"
    bench = Bench(out, settings, users_file)
    bench.log(f"replica benchmark -> {out} (load average {description['load_average']}; {wrk}; "
              f"{haproxy})")
    clock = time.perf_counter()
    models = ensure_models(settings.items, root, settings.users, settings.epochs,
                           out / "logs" / "train.log")
    users_file.write_text("\n".join(models.user_ids()) + "\n")
    with ExitStack() as stack:
        sets = start_sets(bench, models, stack)
        measure_sets(bench, sets)
        summaries = [each.summary() for each in sets]
    results = {"sets": summaries, "meta": {
        "started": started.isoformat(timespec="seconds"), "settings": asdict(settings),
        "duration_s": round(time.perf_counter() - clock, 1), "machine": description,
        "load_average_end": [round(v, 2) for v in os.getloadavg()], "wrk": wrk,
        "haproxy": haproxy, "code_fingerprint": code_fingerprint(), "models": str(root),
        "progress": bench.progress}}
    path = replicas_report.write(out, results)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
