"""What components report: named events with string labels, and stage timings."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class EventSink(Protocol):
    """Receives `name` and its labels, e.g. ("lookup", kind="results", level="l1")."""

    def __call__(self, name: str, **labels: str) -> None: ...


def ignore_event(name: str, **labels: str) -> None:
    """The sink of a component built without one."""


class Telemetry:
    """What the request path reports; the service plugs Prometheus in, tests may collect."""

    def event(self, name: str, **labels: str) -> None:
        pass

    def observe(self, stage: str, seconds: float) -> None:
        pass


@dataclass(frozen=True)
class BreakerStateEvents:
    """A circuit breaker's state listener: each change becomes a `breaker_state` event."""

    on_event: EventSink
    breaker: str

    def __call__(self, previous: str, new: str) -> None:
        self.on_event("breaker_state", breaker=self.breaker, state=new, previous=previous)
