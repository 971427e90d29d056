"""The main command's server stops everything it started, on SIGTERM as on Ctrl+C.

`scripts/run.sh` ends by exec'ing `scripts/serve.py`, so a `kill <pid>` of the main command is a
SIGTERM to serve.py: it must stop `bentoml serve` (and its workers), then the redis-server it
started, and leave the port closed.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.local_redis import ping
from devtools.processes import REPO_ROOT, ServerProcess
from tests.support.fixtures_models import TrainedModels

pytestmark = pytest.mark.slow

STOP_WITHIN_S = 30.0
REDIS_LINE = re.compile(r"started a local Redis at redis://127\.0\.0\.1:(\d+)/0")


def _group(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # state, ppid, pgrp
            members.append(int(entry.name))
    return members


@pytest.fixture(params=[signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def main_server(request: pytest.FixtureRequest, trained_models: TrainedModels,
                tmp_path: Path) -> Iterator[tuple[ServerProcess, signal.Signals]]:
    env = {**trained_models.env(), "RECSYS_MODEL_SOURCE": "pinned", "RECSYS_REDIS_URL": "",
           "RECSYS_ADMIN_TOKEN": "test-token"}
    server = ServerProcess("scripts/serve.py",
                           [sys.executable, "scripts/serve.py", "--port", "{port}",
                            "--run-dir", str(tmp_path / "run")],
                           env, tmp_path / "serve.log", cwd=REPO_ROOT)
    with server:
        yield server, request.param


def test_a_signal_stops_the_service_and_the_redis_it_started(
        main_server: tuple[ServerProcess, signal.Signals]) -> None:
    server, sig = main_server
    found = REDIS_LINE.search(server.log_path.read_text(errors="replace"))
    assert found, server.log_tail()
    redis_port = int(found.group(1))
    assert ping(redis_port)
    pid = server.pid
    with server.client() as client:
        assert client.post("/recommend", json={"user_id": "1", "k": 3}).status_code == 200

    # Only serve.py is signalled (kill <pid>), not its process group: Ctrl+C in a terminal
    # reaches the whole group, which the SIGINT case covers by signalling the group.
    if sig == signal.SIGINT:
        os.killpg(pid, sig)
    else:
        os.kill(pid, sig)
    deadline = time.monotonic() + STOP_WITHIN_S
    while time.monotonic() < deadline and (_alive_child(server) or _group(pid)):
        time.sleep(0.2)
    assert not _group(pid), f"still running: {_group(pid)}\n{server.log_tail()}"
    assert not ping(redis_port), "the redis-server serve.py started outlived it"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/livez", timeout=2.0)


def _alive_child(server: ServerProcess) -> bool:
    process = server.process
    return process is not None and process.poll() is None
