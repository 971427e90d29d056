"""Server processes for tests and benchmarks: ready when the probe answers, stopped with their
whole process group, a failed start reported with its log."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import pytest

from devtools.processes import ServerProcess, ServerStartError

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
