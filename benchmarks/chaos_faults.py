"""The chaos suite's faults, each a class with begin() and end(): Redis killed, slowed, out of
memory or pausing writes; a BentoML service's process killed or throttled; the CPU saturated;
the shadow log's disk full; a promotion and a rollback in the model registry. end() leaves the
system as begin() found it (or, for a killed process, waits until BentoML's supervisor has
started its replacement; a promotion stays, and a rollback undoes it); `notes` says what was
done (pids, times) for the report.
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil
import redis

from devtools.latency_proxy import LatencyProxy
from devtools.local_redis import LocalRedis, server_pid
from recsys.models.registry_client import CHAMPION, model_tag
from registry import ModelSet, Registry
from registry.admin_client import AdminClient

RESPAWN_TIMEOUT_S = 60.0


class Fault(Protocol):
    name: str
    description: str
    notes: dict[str, Any]

    def begin(self) -> None: ...

    def end(self) -> None: ...


def service_pids(root_pid: int, service: str) -> list[int]:
    """Pids of the worker processes BentoML runs for `service` (its --service-name) under the
    `bentoml serve` process root_pid, in worker-id order."""
    found = []
    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for process in children:
        try:
            args = process.cmdline()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if "--service-name" in args and args[args.index("--service-name") + 1] == service \
                and process.status() != psutil.STATUS_ZOMBIE:
            worker = args[args.index("--worker-id") + 1] if "--worker-id" in args else "0"
            found.append((worker, process.pid))
    return [pid for _, pid in sorted(found)]


@dataclass
class RedisKill:
    """SIGKILL redis-server (no shutdown, no final save), start it again on the same port and
    files when the fault ends."""

    redis: LocalRedis
    name: str = "redis-kill"
    description: str = "redis-server SIGKILLed, restarted on its append-only file after the fault"
    notes: dict[str, Any] = field(default_factory=dict)

    def begin(self) -> None:
        pid = server_pid(self.redis.port)
        assert pid is not None, "Redis is not running"
        os.kill(pid, signal.SIGKILL)
        self.notes["killed_pid"] = pid

    def end(self) -> None:
        started = time.monotonic()
        self.redis.stop()  # reaps the killed process
        self.redis.start()
        self.notes["restart_s"] = round(time.monotonic() - started, 3)
        self.notes["new_pid"] = server_pid(self.redis.port)


@dataclass
class RedisLatency:
    """Every byte between the service and Redis delayed by `delay_ms` each way (the proxy)."""

    proxy: LatencyProxy
    delay_ms: float
    name: str = ""
    description: str = ""
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.name = self.name or f"redis-latency-{self.delay_ms:g}ms"
        self.description = self.description or (
            f"a TCP proxy delays every byte to and from Redis by {self.delay_ms:g} ms each way")

    def begin(self) -> None:
        self.proxy.set_delay_ms(self.delay_ms)

    def end(self) -> None:
        self.proxy.set_delay_ms(0)


@dataclass
class RedisOutOfMemory:
    """maxmemory 1 byte with noeviction: every write is answered with an OOM error, reads work."""

    url: str
    name: str = "redis-oom"
    description: str = "Redis answers every write with OOM (CONFIG SET maxmemory 1, noeviction)"
    notes: dict[str, Any] = field(default_factory=dict)

    def begin(self) -> None:
        with redis.Redis.from_url(self.url) as client:
            self.notes["previous"] = client.config_get("maxmemory*")
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", 1)

    def end(self) -> None:
        previous = self.notes.get("previous", {})
        with redis.Redis.from_url(self.url) as client:
            client.config_set("maxmemory", previous.get("maxmemory", 0))
            client.config_set("maxmemory-policy", previous.get("maxmemory-policy", "noeviction"))


@dataclass
class RedisPausedWrites:
    """CLIENT PAUSE WRITE: reads are answered, writes wait (past the service's timeouts) until
    the pause ends, and are then carried out."""

    url: str
    seconds: float
    name: str = "redis-pause-writes"
    description: str = "CLIENT PAUSE ... WRITE: Redis holds every write until the fault ends"
    notes: dict[str, Any] = field(default_factory=dict)

    def begin(self) -> None:
        with redis.Redis.from_url(self.url) as client:
            # longer than the fault: end() lifts it; a crashed suite still gets Redis back
            client.execute_command("CLIENT", "PAUSE", int((self.seconds + 30) * 1000), "WRITE")

    def end(self) -> None:
        with redis.Redis.from_url(self.url) as client:
            client.execute_command("CLIENT", "UNPAUSE")


@dataclass
class ProcessKill:
    """SIGKILL one worker process of a BentoML service; the fault ends when the supervisor has
    started its replacement (the replacement then loads its models: part of the recovery)."""

    root_pid: int
    service: str
    name: str
    description: str
    port: int | None = None  # an API service's port: kill the worker holding most clients
    notes: dict[str, Any] = field(default_factory=dict)

    def begin(self) -> None:
        pids = service_pids(self.root_pid, self.service)
        assert pids, f"no process of {self.service}"
        victim = pids[0] if self.port is None else max(pids, key=self._clients)
        self.notes["workers_before"] = pids
        self.notes["killed_pid"] = victim
        if self.port is not None:
            self.notes["client_connections"] = {pid: self._clients(pid) for pid in pids}
        os.kill(victim, signal.SIGKILL)
        self._killed_at = time.monotonic()

    def _clients(self, pid: int) -> int:
        """Established connections of the process on the service's port (workers share the
        listening socket; each holds the connections it accepted)."""
        try:
            return sum(1 for c in psutil.Process(pid).net_connections("tcp")
                       if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == self.port)
        except psutil.NoSuchProcess:
            return 0

    def end(self) -> None:
        expected = len(self.notes["workers_before"])
        deadline = time.monotonic() + RESPAWN_TIMEOUT_S
        while time.monotonic() < deadline:
            pids = service_pids(self.root_pid, self.service)
            if len(pids) >= expected and self.notes["killed_pid"] not in pids:
                self.notes["workers_after"] = pids
                self.notes["respawned_after_s"] = round(time.monotonic() - self._killed_at, 3)
                return
            time.sleep(0.05)
        self.notes["respawned_after_s"] = None  # the restore check reports it


@dataclass
class ProcessThrottle:
    """Slows every worker of a service by stopping it (SIGSTOP) for `stopped_ms` of each
    `stopped_ms + running_ms`: each call it serves takes several times as long, past the
    stage's timeout. end() lets it run again (SIGCONT)."""

    root_pid: int
    service: str
    name: str
    description: str
    stopped_ms: float = 900.0
    running_ms: float = 100.0
    notes: dict[str, Any] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def begin(self) -> None:
        pids = service_pids(self.root_pid, self.service)
        assert pids, f"no process of {self.service}"
        self.notes["pids"] = pids
        self._stop.clear()
        self._thread = threading.Thread(target=self._cycle, args=(pids,), daemon=True)
        self._thread.start()

    def _cycle(self, pids: list[int]) -> None:
        try:
            while not self._stop.is_set():
                _signal_all(pids, signal.SIGSTOP)
                self._stop.wait(self.stopped_ms / 1000)
                _signal_all(pids, signal.SIGCONT)
                self._stop.wait(self.running_ms / 1000)
        finally:
            _signal_all(pids, signal.SIGCONT)

    def end(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        _signal_all(self.notes["pids"], signal.SIGCONT)


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class CpuHog:
    """A busy loop in its own process on every core (competing with the service as another
    tenant of the machine would)."""

    processes: int = field(default_factory=lambda: os.cpu_count() or 1)
    name: str = "cpu-saturated"
    description: str = ""
    notes: dict[str, Any] = field(default_factory=dict)
    _hogs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.description = self.description or (
            f"{self.processes} busy-looping processes (one per core) compete for the CPU")

    def begin(self) -> None:
        self._hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                      for _ in range(self.processes)]

    def end(self) -> None:
        for hog in self._hogs:
            hog.kill()
            hog.wait()
        self._hogs = []


@dataclass
class DiskFull:
    """Fills the (small tmpfs) file system holding the shadow log with a filler file until the
    disk refuses to take more; end() removes it."""

    directory: Path
    name: str = "shadow-disk-full"
    description: str = "the shadow log's file system (a tmpfs) filled up: its writes fail ENOSPC"
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def filler(self) -> Path:
        return self.directory / "filler"

    def begin(self) -> None:
        written = 0
        with self.filler.open("wb", buffering=0) as out:
            try:
                while True:
                    written += out.write(b"\0" * 4096)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
        self.notes["filler_bytes"] = written

    def end(self) -> None:
        self.filler.unlink(missing_ok=True)


@dataclass
class Promotion:
    """The registry's promotion (`Registry.promote_versions`, what `python -m registry promote`
    runs) of whichever of `sets` is not the champion: the champion alias moves to it and
    previous_champion to the set it leaves. Every API worker's registry follower then fetches,
    verifies, loads, warms and swaps it in. end() moves nothing back: a rollback does that.
    `versions`: the model tags every answer names once the promotion has reached every worker."""

    registry: Registry  # writes through the tracking server the service reads
    sets: tuple[ModelSet, ModelSet]
    name: str = "promotion"
    description: str = ("the champion alias moved to the other registered model set (Registry."
                        "promote_versions); every API worker's follower loads it and swaps")
    notes: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    tags: list[dict[str, str]] = field(default_factory=list)  # of each of `sets`

    def __post_init__(self) -> None:  # read once, so that begin() only promotes
        self.tags = [served_tags(self.registry, model_set) for model_set in self.sets]

    def begin(self) -> None:
        started = time.monotonic()
        new = 1 if self.registry.resolve(CHAMPION) == self.sets[0] else 0
        self.versions = self.tags[new]
        self.registry.promote_versions(self.sets[new])
        self.notes.update(promoted=self.versions, was=self.tags[1 - new],
                          promoted_in_s=round(time.monotonic() - started, 3))

    def end(self) -> None:
        pass


@dataclass
class Rollback:
    """POST /admin/rollback to the service under load (what `python -m registry rollback --url`
    sends): the service moves the champion alias back to previous_champion, and every worker's
    follower loads that set and swaps. `versions`: the tags the service names as the champion."""

    url: str
    token: str
    name: str = "rollback"
    description: str = ("POST /admin/rollback (python -m registry rollback --url): the service "
                        "puts previous_champion back as the champion; its followers swap to it")
    notes: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def begin(self) -> None:
        admin = AdminClient(self.url, self.token)
        started = time.monotonic()
        try:
            self.versions = admin.rollback()
        finally:
            admin.close()
        self.notes.update(rolled_back_to=self.versions,
                          admin_answered_in_s=round(time.monotonic() - started, 3))

    def end(self) -> None:
        pass


def served_tags(registry: Registry, model_set: ModelSet) -> dict[str, str]:
    """kind -> the tag answers name for a registered set (recsys.models.registry_client)."""
    fingerprints = registry.fingerprints(model_set)
    return {kind: model_tag(name, version, fingerprints[kind])
            for kind, name, version in model_set.items()}
