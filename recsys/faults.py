"""Fault injection for resilience tests and game days: off unless RECSYS_FAULTS names stages.

RECSYS_FAULTS="ranker:error,ann:timeout" makes the ranker call raise and the ANN source hang past
its timeout. Stages: user_tower, ranker, fallback, ann, popular, item2item, history.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from recsys.errors import RecsysError

STAGES = ("user_tower", "ranker", "fallback", "ann", "popular", "item2item", "history")
MODES = ("error", "timeout")
HANG_S = 5.0  # longer than any stage timeout


class InjectedFault(RecsysError):
    """Raised by a stage that RECSYS_FAULTS told to fail."""


@dataclass(frozen=True)
class Faults:
    modes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> Faults:
        modes: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            stage, _, mode = part.partition(":")
            if stage not in STAGES or mode not in MODES:
                raise ValueError(f"RECSYS_FAULTS entry {part!r}: expected <stage>:<mode> with "
                                 f"stage in {STAGES} and mode in {MODES}")
            modes[stage] = mode
        return cls(modes)

    def check(self, stage: str) -> None:
        """Synchronous stages (run in worker threads)."""
        mode = self.modes.get(stage)
        if mode == "error":
            raise InjectedFault(f"injected failure in {stage}")
        if mode == "timeout":
            time.sleep(HANG_S)

    async def acheck(self, stage: str) -> None:
        mode = self.modes.get(stage)
        if mode == "error":
            raise InjectedFault(f"injected failure in {stage}")
        if mode == "timeout":
            await asyncio.sleep(HANG_S)
