"""HTTP servers as child processes on 127.0.0.1, for the tests and the benchmarks alike: start,
wait until ready, read the log, stop the whole process tree.

Every server runs in its own session (process group). Stopping it sends SIGTERM to that group,
then SIGKILL to whatever of the server's process tree is left after a while: BentoML's supervisor
(circus) starts each worker in a session of its own, out of the group's reach, and a worker whose
supervisor was killed goes on serving on its inherited socket and ticking against the shared
Redis. Its output goes to a log file that a failed start prints and that callers can attach to an
assertion message (`log_tail`).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psutil

from devtools.local_redis import free_port

if TYPE_CHECKING:
    from typing_extensions import Self

REPO_ROOT = Path(__file__).resolve().parent.parent
QUIET_ENV = {"BENTOML_DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
             "DO_NOT_TRACK": "true", "TQDM_DISABLE": "1"}
READY_TIMEOUT_S = 90.0
# How long `bentoml serve` keeps an idle keep-alive connection open (`--timeout-keep-alive`):
# longer than its clients' and load balancers' idle timeouts (httpx 5 s, HAProxy's idle server
# connections 5 s, an AWS ALB 60 s), so the client end always closes an idle connection first.
# uvicorn's default, 5 s, equals httpx's: a request sent on a connection the server is closing
# at that moment is reset. serving/Dockerfile.template gives the image the same value.
KEEP_ALIVE_S = 75
STOP_TIMEOUT_S = 10.0
STARTUP_FAILED = "Application startup failed"
STARTUP_FAILURES_TO_GIVE_UP = 3  # lines; BentoML may log each failure twice, and retries it


class ServerStartError(RuntimeError):
    """The server exited or did not answer its readiness probe in time; the message carries
    its log."""


class ServerProcess:
    """`command` (with "{port}" replaced by a free port) serving HTTP on 127.0.0.1 until
    stopped. `env` is added to the environment (`base_env`, by default this process's)."""

    def __init__(self, name: str, command: Sequence[str], env: Mapping[str, str],
                 log_path: Path, *, ready_path: str = "/readyz", cwd: Path = REPO_ROOT,
                 base_env: Mapping[str, str] | None = None, port: int | None = None,
                 ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        self.name, self.log_path, self.ready_path, self.cwd = name, log_path, ready_path, cwd
        self.ready_timeout_s = ready_timeout_s
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [part.replace("{port}", str(self.port)) for part in command]
        self.env = {**(os.environ if base_env is None else base_env), **QUIET_ENV, **env}
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_s = 0.0
        self._launched = 0.0

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} is not running")
        return self.process.pid

    def start(self, timeout_s: float | None = None) -> Self:
        """Launch and wait until ready; stopped again if it does not get there."""
        self.launch()
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def launch(self) -> Self:
        """Start the process without waiting (several servers can then start together)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._launched = time.perf_counter()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Poll the readiness path (for `ready_timeout_s` by default); sets startup_s (launch to
        ready) on success."""
        timeout_s = self.ready_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    self._fail(f"exited with code {self.process.returncode} before it was ready")
                if self._startup_failures() >= STARTUP_FAILURES_TO_GIVE_UP:
                    self._fail("failed its start-up hooks (BentoML restarts the worker forever)")
                try:
                    if client.get(self.ready_path).status_code == 200:
                        self.startup_s = round(time.perf_counter() - self._launched, 2)
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.25)
        self._fail(f"not ready at {self.url}{self.ready_path} after {timeout_s:.0f} s")

    def _fail(self, what: str) -> None:
        log = self.log_tail()
        print(f"--- {self.name} log ({self.log_path}) ---\n{log}", file=sys.stderr)
        raise ServerStartError(f"{self.name} {what}; log tail:\n{log}")

    def _startup_failures(self) -> int:
        try:
            return self.log_path.read_text(errors="replace").count(STARTUP_FAILED)
        except OSError:
            return 0

    def log_tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def client(self, timeout_s: float = 10.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout_s)

    def metrics(self) -> str:
        """The Prometheus text of /metrics ('' when the server has none)."""
        try:
            response = httpx.get(f"{self.url}/metrics", timeout=10.0)
        except httpx.TransportError:
            return ""
        return response.text if response.status_code == 200 else ""

    def stop(self) -> None:
        """SIGTERM to the whole process group; SIGKILL to every process of the server left
        after STOP_TIMEOUT_S (noted in its log)."""
        process, self.process = self.process, None
        if process is not None:
            killed = stop_process_group(process, STOP_TIMEOUT_S)
            if killed:
                with self.log_path.open("a") as log:
                    log.write(f"\n[devtools] not stopped {STOP_TIMEOUT_S:g} s after SIGTERM: "
                              f"SIGKILLed {', '.join(killed)}\n")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bentoml_serve(target: str, env: Mapping[str, str], log_path: Path, *,
                  args: Sequence[str] = (), name: str | None = None,
                  cwd: Path = REPO_ROOT, base_env: Mapping[str, str] | None = None,
                  ready_timeout_s: float = READY_TIMEOUT_S) -> ServerProcess:
    """`python -m bentoml serve <target>` on 127.0.0.1 and a free port."""
    command = [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1",
               "--port", "{port}", "--timeout-keep-alive", str(KEEP_ALIVE_S), *args]
    return ServerProcess(name or f"bentoml serve {target}", command, env, log_path, cwd=cwd,
                         base_env=base_env, ready_timeout_s=ready_timeout_s)


def stop_process_group(process: subprocess.Popen[bytes], timeout_s: float) -> list[str]:
    """SIGTERM a process started with start_new_session=True and its group, SIGKILL after
    timeout_s; then SIGKILL every descendant still running, whatever its session (a worker
    that outlived its parent). Returns what had to be SIGKILLed ("pid name"), if anything."""
    tree = process_tree(process.pid)  # before the parent exits and its children are reparented
    killed = []
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            killed.append(_label(tree[0]) if tree else str(process.pid))
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout_s)
    _signal_group(process.pid, signal.SIGKILL)
    left = [member for member in tree[1:] if _outside_group_and_running(member, process.pid)]
    for member in left:
        label = _label(member)  # while it still has a name
        try:
            member.kill()  # psutil: not a process that took a reused pid
            killed.append(label)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=timeout_s)
    return killed


def _label(member: psutil.Process) -> str:
    """"pid name" (just the pid once it has exited)."""
    try:
        return f"{member.pid} {member.name()}"
    except psutil.NoSuchProcess:
        return str(member.pid)


def _outside_group_and_running(member: psutil.Process, group: int) -> bool:
    """Still running and out of `group`'s reach (the group's own were SIGKILLed with it)."""
    try:
        return os.getpgid(member.pid) != group and member.is_running() and \
            member.status() != psutil.STATUS_ZOMBIE
    except (ProcessLookupError, psutil.NoSuchProcess):
        return False


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and every descendant, whatever their session (empty when it has exited)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
