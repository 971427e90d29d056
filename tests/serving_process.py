"""A `bentoml serve` subprocess for end-to-end tests: start, wait for /readyz, stop its group.

The server runs in its own session (process group), so stopping it also ends the worker processes
BentoML forks for each service. Its output goes to a log file that is printed when start-up fails
and that tests can attach to an assertion message with `log_tail()`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import httpx

from benchmarks.servers import stop_process_group
from recsys.local_redis import free_port

if TYPE_CHECKING:
    from typing_extensions import Self

REPO_ROOT = Path(__file__).resolve().parent.parent
QUIET_ENV = {"BENTOML_DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
             "DO_NOT_TRACK": "true", "TQDM_DISABLE": "1"}
# Stage timeouts for servers whose tests are about behaviour, not latency: the defaults (150 ms
# budget, 60 ms ranking) turn a busy 2-core CI machine's hiccups into degraded responses.
# test_service_faults keeps the defaults, because timeouts are what it tests.
# Happy-path servers: a loaded 2-core CI machine must not turn a slow reply into a degradation.
RELAXED_LATENCY = {"RECSYS_BUDGET_MS": "2000", "RECSYS_RETRIEVAL_TIMEOUT_MS": "500",
                   "RECSYS_RANKING_TIMEOUT_MS": "1000", "RECSYS_REDIS_TIMEOUT_MS": "500"}
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0
STARTUP_FAILED = "Application startup failed"
STARTUP_FAILURES_TO_GIVE_UP = 3  # lines; BentoML may log each failure twice, and retries it
T = TypeVar("T")


class ServerStartError(RuntimeError):
    """The server exited or did not answer /readyz in time; the message carries its log."""


class ServingProcess:
    """`python -m bentoml serve <target> --port <free port>` in `cwd` with `env` added."""

    def __init__(self, target: str, env: Mapping[str, str], log_path: Path,
                 cwd: Path = REPO_ROOT, args: Sequence[str] = (),
                 base_env: Mapping[str, str] | None = None) -> None:
        self.target, self.cwd, self.log_path = target, cwd, log_path
        self.env = {**(os.environ if base_env is None else base_env), **QUIET_ENV, **env}
        self.args = tuple(args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bentoml", "serve", self.target, "--host", "127.0.0.1",
                 "--port", str(self.port), *self.args],
                cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    self._fail(f"exited with code {self.process.returncode} before it was ready")
                if self._startup_failures() >= STARTUP_FAILURES_TO_GIVE_UP:
                    self._fail("failed its start-up hooks (BentoML restarts the worker forever)")
                try:
                    if client.get("/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.25)
        self._fail(f"not ready on {self.url}/readyz after {timeout_s:.0f} s")

    def _fail(self, what: str) -> None:
        log = self.log_tail()
        print(f"--- bentoml serve {self.target} log ({self.log_path}) ---\n{log}", file=sys.stderr)
        raise ServerStartError(f"bentoml serve {self.target} {what}; log tail:\n{log}")

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

    def stop(self) -> None:
        """SIGTERM to the whole process group, SIGKILL if it is still there after a while."""
        process, self.process = self.process, None
        if process is not None:
            stop_process_group(process, STOP_TIMEOUT_S)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def error_fields(response: httpx.Response) -> set[str]:
    """Request fields an error body names: pydantic's `loc` paths ("context.hour") and the
    "<field>: ..." prefix of the project's own messages. BentoML sends {"error": ..., "detail":
    [...]} for validation errors and [{"error": ...}] for errors the service raises."""
    body = response.json()
    entries = body if isinstance(body, list) else [body]
    fields = set()
    for entry in entries:
        for detail in entry.get("detail") or []:
            fields.add(".".join(str(part) for part in detail["loc"]))
        message = str(entry.get("error", ""))
        if ": " in message:
            fields.add(message.split(": ", 1)[0])
    return fields


def error_text(response: httpx.Response) -> str:
    """Every message in an error body, joined (for `in` checks and assertion output)."""
    body = response.json()
    entries = body if isinstance(body, list) else [body]
    parts = []
    for entry in entries:
        parts.append(str(entry.get("error", "")))
        parts += [str(detail.get("msg", "")) for detail in entry.get("detail") or []]
    return " | ".join(parts)


def metric_samples(text: str, prefix: str = "") -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} for the samples whose name starts with prefix."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and line.startswith(prefix):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def metric_delta(before: str, after: str) -> dict[str, float]:
    """Samples that changed between two scrapes, as increments (new series count from 0)."""
    old, new = metric_samples(before), metric_samples(after)
    return {key: value - old.get(key, 0.0) for key, value in new.items()
            if value != old.get(key, 0.0)}


def wait_for(condition: Callable[[], T], timeout_s: float, what: str,
             interval_s: float = 0.2) -> T:
    """Poll `condition()` until it returns something truthy; AssertionError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"{what} not met within {timeout_s} s (last: {last!r})")
