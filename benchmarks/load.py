"""Drive a target with wrk (one thread, N connections, bounded in time and requests) and parse it.

The same client and Lua script (recommend.lua) serve every target. wrk's own CPU time comes
from wait4()'s resource usage of the wrk process, so a run where the client saturates its core
is visible; the server's and the whole machine's CPU come from procstats over the same window.
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
_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


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


@dataclass
class LoadResult:
    target: str
    spec: dict[str, Any]
    requests: int
    duration_s: float
    rps: float
    latency_ms: dict[str, float]  # wrk, client side: p50 p75 p90 p95 p99 p99.9 mean max
    non_2xx: int
    socket_errors: dict[str, int]
    server_latency_ms: dict[str, float]  # from latency_ms in each 200 body
    cache_levels: dict[str, int]
    degraded: int  # 200 responses marked degraded (fallbacks; never cached)
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
               "BENCH_MAX_REQUESTS": str(spec.max_requests), "BENCH_SEED": str(spec.seed),
               "BENCH_THREADS": "1", "BENCH_OUT": str(out_file)}
        command = [wrk_binary(), "-t1", f"-c{spec.connections}", f"-d{max(1, round(spec.duration_s))}s",
                   f"--timeout={max(1, round(spec.timeout_s))}s", "--latency", "-s", str(LUA_SCRIPT),
                   spec.url]
        meter = CpuMeter(server_pids)
        stdout, client_cpu = _run_bounded(command, env, spec.duration_s + spec.timeout_s + 20)
        cpu = meter.finish(client_cpu)
        if not out_file.is_file():
            raise LoadError(f"wrk wrote no summary; output:\n{stdout[-2000:]}")
        summary = json.loads(out_file.read_text())
    return _result(target, spec, stdout, summary, client_cpu, cpu.as_dict())


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
    lat = summary["latency_us"]
    latency = {f"p{k}": round(v / 1000, 3) for k, v in lat["percentiles"].items()}
    latency.update(mean=round(lat["mean"] / 1000, 3), max=round(lat["max"] / 1000, 3))
    _check_against_text(stdout, latency)
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
        target=target, spec={**asdict(spec), "users_file": str(spec.users_file)},
        requests=requests, duration_s=round(duration_s, 3),
        rps=round(requests / duration_s, 1) if duration_s else 0.0, latency_ms=latency,
        non_2xx=max(int(errors["status"]), _non_2xx(stdout)),
        socket_errors={k: int(errors[k]) for k in ("connect", "read", "write", "timeout")},
        server_latency_ms=server_pct, cache_levels=summary.get("cache_levels") or {},
        degraded=int(summary.get("degraded", 0)),
        client_cpu_s=round(client_cpu, 3), cpu=cpu,
        extra={"capped": bool(summary.get("capped")), "wrk_duration_s": summary["duration_us"] / 1e6})


def _non_2xx(stdout: str) -> int:
    match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", stdout)
    return int(match.group(1)) if match else 0


def parse_latency_distribution(stdout: str) -> dict[str, float]:
    """The `--latency` block of wrk's text output: {"p50": ms, "p75": ..., "p90": ..., "p99": ...}."""
    out = {}
    for pct, value, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m)\s*$", stdout, re.MULTILINE):
        out[f"p{pct}"] = float(value) * _UNITS_MS[unit]
    return out


def _check_against_text(stdout: str, latency: dict[str, float]) -> None:
    """The Lua summary and wrk's printed distribution come from the same histogram: agree."""
    printed = parse_latency_distribution(stdout)
    if "p50" not in printed:
        raise LoadError(f"no latency distribution in wrk output:\n{stdout[-2000:]}")
    for key, value in printed.items():
        mine = latency.get(key)
        if mine is not None and abs(mine - value) > max(0.02 * value, 0.02):
            raise LoadError(f"wrk {key}: printed {value} ms, Lua summary {mine} ms")
