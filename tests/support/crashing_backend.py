"""A stand-in replica for the load balancer's tests: answers /readyz, counts every POST by path
(GET /received) and answers it with the X-Forwarded-For it got, and for the paths named in
--crash-on reads the request, then closes the connection without an answer, as a replica killed
mid-request would.

    python -m tests.support.crashing_backend --port 8001 --name a --crash-on /recommend /events
"""
from __future__ import annotations

import argparse
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Received:
    """POSTs received per path, shared by the handler threads."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()

    def add(self, path: str) -> None:
        with self.lock:
            self.counts[path] += 1

    def as_json(self) -> bytes:
        with self.lock:
            return json.dumps(dict(self.counts)).encode()


class CrashingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real replicas
    name = "?"
    crash_on: frozenset[str] = frozenset()
    received = Received()

    def do_GET(self) -> None:
        if self.path == "/received":
            self._answer(200, self.received.as_json())
        elif self.path == "/readyz":
            self._answer(200, b"")
        else:
            self._answer(404, b"")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.add(self.path)
        if self.path in self.crash_on:
            self.close_connection = True  # no status line: HAProxy sees an empty response
            return
        self._answer(200, json.dumps({"replica": self.name, "path": self.path,
                                      "forwarded_for": self.headers.get_all("X-Forwarded-For")
                                      }).encode())

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--crash-on", nargs="*", default=[])
    args = parser.parse_args()
    CrashingHandler.name, CrashingHandler.crash_on = args.name, frozenset(args.crash_on)
    ThreadingHTTPServer(("127.0.0.1", args.port), CrashingHandler).serve_forever()


if __name__ == "__main__":
    main()
