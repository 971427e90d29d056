"""Drive a target with wrk (one thread per connection, bounded in time and requests), parse it.

The same client and Lua script (recommend.lua) serve every target, /search's too (from a bodies
file). wrk's own CPU time comes from wait4()'s resource usage of the wrk process, so a run where
the client saturates its core is visible; the server's and the whole machine's CPU come from
procstats over the same window.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.procstats import CpuMeter

LUA_SCRIPT = Path(__file__).with_name("recommend.lua")


class LoadError(RuntimeError):
    """wrk is missing, failed, or produced output this module cannot read."""


@dataclass(frozen=True)
class LoadSpec:
    """One wrk run. mode: distinct | zipf | hot (see recommend.lua)."""

    url: str
    users_file: Path
    connections: int
    duration_s: float
    mode: str = "distinct"
    path: str = "/recommend"
    k: int = 10
    offset: int = 0
    zipf_s: float = 1.0
    hot_users: int = 64
    max_requests: int = 0  # 0: bounded by duration only
    timeout_s: float = 5.0
    seed: int = 1
    context: bool = True  # False: bodies without a context (a user id and k only)
    # One JSON object a line, sent instead of users' bodies (request n: line n mod B), with k in
    # the field k_field (/search: "page_size"); benchmarks/search_http.py writes one.
    bodies_file: Path | None = None
    k_field: str = "k"


@dataclass
class LoadResult:
    target: str
    spec: dict[str, Any]
    requests: int
    duration_s: float
    rps: float
    latency_ms: dict[str, float]  # client side, timed in recommend.lua: p50 ... p99.9 mean max
    non_2xx: int
    socket_errors: dict[str, int]
    server_latency_ms: dict[str, float]  # from latency_ms in each 200 body
    cache_levels: dict[str, int]
    degraded: int  # 200 responses marked degraded (fallbacks)
    client_cpu_s: float
    cpu: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def hit_rate(self) -> float | None:
        total = sum(self.cache_levels.values())
        if not total or set(self.cache_levels) <= {"none"}:
            return None
        return (self.cache_levels.get("l1", 0) + self.cache_levels.get("l2", 0)) / total

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hit_rate": self.hit_rate}


def wrk_binary() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise LoadError("wrk not found on PATH: apt-get install -y wrk")
    return path


def wrk_version() -> str:
    out = subprocess.run([wrk_binary(), "-v"], capture_output=True, text=True, timeout=10,
                         check=False)
    return (out.stdout + out.stderr).splitlines()[0].strip()


def run_wrk(target: str, spec: LoadSpec, server_pids: list[int]) -> LoadResult:
    """Run wrk once against `spec.url`; server_pids are the process trees whose CPU to count."""
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        out_file = Path(tmp) / "summary.json"
        env = {**os.environ, "BENCH_USERS_FILE": str(spec.users_file), "BENCH_MODE": spec.mode,
               "BENCH_PATH": spec.path, "BENCH_K": str(spec.k), "BENCH_OFFSET": str(spec.offset),
               "BENCH_ZIPF_S": str(spec.zipf_s), "BENCH_HOT_USERS": str(spec.hot_users),
               "BENCH_MAX_REQUESTS": str(_per_thread(spec.max_requests, spec.connections)),
               "BENCH_SEED": str(spec.seed), "BENCH_THREADS": str(spec.connections),
               "BENCH_CONTEXT": "1" if spec.context else "0",
               "BENCH_BODIES_FILE": str(spec.bodies_file or ""), "BENCH_K_FIELD": spec.k_field,
               "BENCH_OUT": str(out_file)}
        # One thread per connection: recommend.lua pairs each request with its response per
        # thread, which is exact only when a thread drives a single connection.
        command = [wrk_binary(), f"-t{spec.connections}", f"-c{spec.connections}",
                   f"-d{max(1, round(spec.duration_s))}s",
                   f"--timeout={max(1, round(spec.timeout_s))}s", "--latency", "-s", str(LUA_SCRIPT),
                   spec.url]
        meter = CpuMeter(server_pids)
        stdout, client_cpu = _run_bounded(command, env, spec.duration_s + spec.timeout_s + 20)
        cpu = meter.finish(client_cpu)
        if not out_file.is_file():
            raise LoadError(f"wrk wrote no summary; output:\n{stdout[-2000:]}")
        summary = json.loads(out_file.read_text())
    return _result(target, spec, stdout, summary, client_cpu, cpu.as_dict())


def _per_thread(max_requests: int, threads: int) -> int:
    """The per-thread share of a run's request cap (0 stays 0: no cap)."""
    return 0 if max_requests <= 0 else max(1, -(-max_requests // threads))


def _run_bounded(command: list[str], env: dict[str, str], limit_s: float) -> tuple[str, float]:
    """(stdout + stderr, CPU seconds of the process) of a command killed after limit_s."""
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + limit_s
        usage = None
        while usage is None:
            pid, status, rusage = os.wait4(process.pid, os.WNOHANG)
            if pid == process.pid:
                usage = rusage
                process.returncode = os.waitstatus_to_exitcode(status)
            elif time.monotonic() > deadline:
                process.send_signal(signal.SIGKILL)
            else:
                time.sleep(0.05)
        output.seek(0)
        text = output.read().decode(errors="replace")
    if process.returncode != 0:
        raise LoadError(f"wrk exited with {process.returncode}:\n{text[-2000:]}")
    return text, usage.ru_utime + usage.ru_stime


def _result(target: str, spec: LoadSpec, stdout: str, summary: dict[str, Any], client_cpu: float,
            cpu: dict[str, Any]) -> LoadResult:
    requests = int(summary["requests"])
    duration_s = summary["duration_us"] / 1e6
    if summary.get("capped") and summary.get("active_s", 0) > 0:
        duration_s = summary["active_s"]  # stopped at max_requests, then idled until -d ended
    latency = client_percentiles(summary["client_latency_ms"])
    histogram = {f"p{k}": round(v / 1000, 3) for k, v in summary["latency_us"]["percentiles"].items()}
    server = np.asarray(summary["server_latency_ms"], dtype=np.float64)
    server_pct = ({f"p{p}": round(float(np.percentile(server, p)), 3) for p in (50, 90, 95, 99)}
                  | {"mean": round(float(server.mean()), 3), "n": int(server.size)}) \
        if server.size else {}
    errors = summary["errors"]
    if requests:  # CPU per request does not depend on how busy the rest of the machine is
        busy_s = cpu["server_cores"] * cpu["wall_s"]
        cpu = {**cpu, "server_cpu_ms_per_request": round(1000 * busy_s / requests, 3),
               "client_cpu_ms_per_request": round(1000 * client_cpu / requests, 3)}
    return LoadResult(
        target=target, spec={**asdict(spec), "users_file": str(spec.users_file),
                             "bodies_file": spec.bodies_file and str(spec.bodies_file)},
        requests=requests, duration_s=round(duration_s, 3),
        rps=round(requests / duration_s, 1) if duration_s else 0.0, latency_ms=latency,
        non_2xx=max(int(errors["status"]), _non_2xx(stdout)),
        socket_errors={k: int(errors[k]) for k in ("connect", "read", "write", "timeout")},
        server_latency_ms=server_pct, cache_levels=summary.get("cache_levels") or {},
        degraded=int(summary.get("degraded", 0)),
        client_cpu_s=round(client_cpu, 3), cpu=cpu,
        extra={"capped": bool(summary.get("capped")), "next_offset": int(summary.get("next", 0)),
               "wrk_duration_s": summary["duration_us"] / 1e6,
               "wrk_histogram_ms": histogram})  # kept to show the discrepancy; not used


def _non_2xx(stdout: str) -> int:
    match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", stdout)
    return int(match.group(1)) if match else 0


def client_percentiles(samples_ms: list[float]) -> dict[str, float]:
    """p50 ... p99.9, mean and max (ms) of the per-request client latencies."""
    values = np.asarray(samples_ms, dtype=np.float64)
    if not values.size:
        raise LoadError("wrk completed no request: no client latency to report")
    out = {f"p{p:g}": round(float(np.percentile(values, p)), 3) for p in (50, 75, 90, 95, 99, 99.9)}
    return out | {"mean": round(float(values.mean()), 3), "max": round(float(values.max()), 3)}
