"""An `on_event` sink for tests: records what cache, breaker, history, retrieval and shadow report."""
from __future__ import annotations


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []

    def __call__(self, name: str, /, **labels: str) -> None:
        self.seen.append((name, labels))

    def count(self, name: str, **labels: str) -> int:
        """Events called `name` whose labels include all of `labels`."""
        return sum(1 for n, lab in self.seen if n == name and labels.items() <= lab.items())
