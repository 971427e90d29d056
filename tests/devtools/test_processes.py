"""Server processes for tests and benchmarks: ready when the probe answers, stopped with their
whole process tree (workers in sessions of their own included, also when the supervisor hangs),
a failed start reported with its log."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from devtools import processes
from devtools.processes import ServerProcess, ServerStartError, bentoml_serve, stop_process_group

SERVE_DIR = [sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1"]


def test_a_server_starts_answers_and_stops_with_its_group(tmp_path: Path) -> None:
    (tmp_path / "ready").write_text("yes")
    server = ServerProcess("http.server", [*SERVE_DIR, "--directory", str(tmp_path)], {},
                           tmp_path / "server.log", ready_path="/ready", ready_timeout_s=30)
    with server:
        assert server.startup_s > 0 and str(server.port) in server.command
        with server.client() as client:
            assert client.get("/ready").text == "yes"
        assert server.metrics() == ""  # no /metrics there
        pid = server.pid
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the group is gone
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/ready", timeout=1.0)


def test_a_server_that_exits_fails_its_start_with_the_log(tmp_path: Path) -> None:
    server = ServerProcess("broken", [sys.executable, "-c", "print('no models here'); exit(3)"],
                           {}, tmp_path / "broken.log", ready_timeout_s=30)

    with pytest.raises(ServerStartError, match=r"(?s)broken exited with code 3.*no models here"):
        server.start()
    assert server.process is None


# A supervisor that ignores SIGTERM, with a worker in a session of its own (as circus starts
# BentoML's workers): the group's signals never reach the worker.
HUNG_SUPERVISOR = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                          start_new_session=True)
print(worker.pid, flush=True)
time.sleep(300)
"""


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # killed, not yet reaped
    except psutil.NoSuchProcess:
        return True


def test_a_worker_in_a_session_of_its_own_is_killed_with_a_supervisor_that_hung() -> None:
    supervisor = subprocess.Popen([sys.executable, "-c", HUNG_SUPERVISOR],
                                  stdout=subprocess.PIPE, start_new_session=True)
    assert supervisor.stdout is not None
    worker = int(supervisor.stdout.readline())
    assert os.getpgid(worker) != supervisor.pid  # out of the group's reach

    killed = stop_process_group(supervisor, timeout_s=1.0)

    assert supervisor.poll() == -signal.SIGKILL and gone(worker)
    assert [entry.split()[0] for entry in killed] == [str(supervisor.pid), str(worker)]


@pytest.mark.slow
def test_bentoml_workers_do_not_outlive_a_supervisor_that_hung(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real thing: `bentoml serve` with its supervisor stopped (SIGSTOP), so that SIGTERM
    does nothing; its workers, each in a session of its own, must not go on serving."""
    monkeypatch.setattr(processes, "STOP_TIMEOUT_S", 2.0)
    server = bentoml_serve("benchmarks.noop_service:Noop", {"RECSYS_WORKERS": "2"},
                           tmp_path / "serve.log").start()
    workers = [p.pid for p in psutil.Process(server.pid).children(recursive=True)
               if "_bentoml_impl.worker" in " ".join(p.cmdline())]
    assert len(workers) == 2 and all(os.getpgid(w) != server.pid for w in workers)
    os.kill(server.pid, signal.SIGSTOP)

    server.stop()

    assert all(gone(w) for w in workers)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/readyz", timeout=1.0)
    assert "not stopped 2 s after SIGTERM: SIGKILLed" in server.log_path.read_text()
