"""A bounded /recommend load from a few threads against 127.0.0.1, every answer kept in order
(for the end-to-end tests that move models under traffic)."""
from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from typing_extensions import Self


@dataclass
class Load:
    """A bounded load of /recommend from a few threads; every answer kept in order."""

    url: str
    threads: int = 3
    answers: list[tuple[float, int, dict[str, Any]]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    max_seconds: float = 120.0

    def run(self, n: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            i = 0
            while not self.stop.is_set() and time.monotonic() < deadline:
                sent = time.monotonic()
                try:
                    response = client.post("/recommend", json={"user_id": f"u{(7 * i + n) % 150}",
                                                               "k": 5})
                    body = response.json() if response.status_code == 200 else {}
                    self.answers.append((sent, response.status_code, body))
                except httpx.HTTPError as error:
                    self.answers.append((sent, -1, {"error": repr(error)}))
                i += 1

    def __enter__(self) -> Self:
        self.workers = [threading.Thread(target=self.run, args=(n,)) for n in range(self.threads)]
        for worker in self.workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.join()

    def summary(self) -> dict[str, Any]:
        statuses = Counter(status for _, status, _ in self.answers)
        degraded = Counter(reason.split(":")[0] for _, _, body in self.answers
                           for reason in body.get("degraded_reasons", []))
        return {"sent": len(self.answers), "failed": sum(n for s, n in statuses.items()
                                                         if s != 200),
                "degraded": sum(1 for _, _, b in self.answers if b.get("degraded")),
                "degraded_reasons": dict(degraded)}
