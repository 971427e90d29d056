"""CPU time and memory of process trees, and of the whole machine, sampled while load runs."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from devtools.processes import process_tree

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_label(process: psutil.Process) -> str:
    """A stable name for a server process: its BentoML service name, else its module or program."""
    try:
        args = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone"
    if "--service-name" in args:
        return args[args.index("--service-name") + 1]
    if "-m" in args:
        return args[args.index("-m") + 1].split(".")[-1]  # e.g. "bentoml" (the supervisor)
    return os.path.basename(args[0]) if args else "?"


def tree_cpu_seconds(pid: int) -> dict[str, float]:
    """label -> user + system CPU seconds so far of every process under `pid` (itself included)."""
    out: dict[str, float] = {}
    for process in process_tree(pid):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        label = process_label(process)
        out[label] = out.get(label, 0.0) + times.user + times.system
    return out


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds summed over every core since boot, from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


@dataclass
class RssSampler:
    """Samples the RSS of every process under the given roots in a background thread.

    `roots()` maps a server name to its root pid; `peak_mb` maps "<server>:<process label>" to
    the highest RSS seen (MiB).
    """

    roots: Callable[[], dict[str, int]]
    interval_s: float = 0.25
    peak_mb: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def sample(self) -> None:
        for server, pid in self.roots().items():
            for process in process_tree(pid):
                try:
                    rss = process.memory_info().rss / 2**20
                except psutil.NoSuchProcess:
                    continue
                label = f"{server}:{process_label(process)}"
                self.peak_mb[label] = max(self.peak_mb.get(label, 0.0), round(rss, 1))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.sample()
        return dict(self.peak_mb)


@dataclass(frozen=True)
class CpuWindow:
    """CPU use over a time window: the client, the server tree (per process) and the machine."""

    wall_s: float
    client_s: float
    server_s: dict[str, float]
    machine_busy_s: float
    cores: int

    def as_dict(self) -> dict[str, float | dict[str, float]]:
        """Shares are of one core (1.0 = one core fully busy); `other` is everyone else's use."""
        server = sum(self.server_s.values())
        other = max(0.0, self.machine_busy_s - server - self.client_s)
        wall = max(self.wall_s, 1e-9)
        return {"wall_s": round(self.wall_s, 3), "client_cores": round(self.client_s / wall, 3),
                "server_cores": round(server / wall, 3),
                "server_cores_by_process": {k: round(v / wall, 3) for k, v in self.server_s.items()},
                "other_cores": round(other / wall, 3),
                "machine_busy_cores": round(self.machine_busy_s / wall, 3), "cores": self.cores}


class CpuMeter:
    """Start before a run, `finish(client_cpu_s)` after it: server and machine CPU in between."""

    def __init__(self, server_pids: list[int]) -> None:
        self.server_pids = server_pids
        self.start_wall = time.perf_counter()
        self.start_server = self._server()
        self.start_machine, _ = machine_cpu_seconds()

    def _server(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid in self.server_pids:
            for label, seconds in tree_cpu_seconds(pid).items():
                out[label] = out.get(label, 0.0) + seconds
        return out

    def finish(self, client_cpu_s: float) -> CpuWindow:
        wall = time.perf_counter() - self.start_wall
        now = self._server()
        server = {k: max(0.0, v - self.start_server.get(k, 0.0)) for k, v in now.items()}
        busy, _ = machine_cpu_seconds()
        return CpuWindow(wall, client_cpu_s, server, busy - self.start_machine,
                         os.cpu_count() or 1)
