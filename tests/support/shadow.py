"""Shadow scoring test support: two scored lists, a challenger call factory, configs, polling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

from recsys.experiments.shadow import ShadowConfig
from recsys.experiments.shadow_records import ScoredList, ShadowRecord, agreement

NOW = 1_790_000_000.25
CHAMPION = ScoredList(
    {"retriever": "7", "ranker": "3"}, [10, 11, 12, 13], [0.9, 0.8, 0.7, 0.6], 4.5
)
CHALLENGER = ScoredList(
    {"retriever": "7", "ranker": "4"}, [11, 10, 14, 13], [0.5, 0.4, 0.3, 0.2], 6.0
)


class Challenger:
    """A challenger call factory that counts calls; optionally slow, failing or off-type."""

    def __init__(self, result: Any = CHALLENGER, delay_s: float = 0.0) -> None:
        self.result, self.delay_s, self.calls = result, delay_s, 0

    def __call__(self) -> Callable[[], Awaitable[Any]]:
        async def call() -> Any:
            self.calls += 1
            await asyncio.sleep(self.delay_s)
            if isinstance(self.result, Exception):
                raise self.result
            return self.result

        return call


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def jsonl_config(tmp_path: Path, **changes: Any) -> ShadowConfig:
    return replace(
        ShadowConfig(fraction=1.0, sink="jsonl", jsonl_path=str(tmp_path / "s.jsonl")), **changes
    )


def redis_config(url: str, **changes: Any) -> ShadowConfig:
    config = ShadowConfig(
        fraction=1.0,
        sink="redis",
        redis_url=url,
        stream_key="test:shadow",
        redis_timeout_s=0.5,
        breaker_failure_threshold=2,
        breaker_reset_timeout_s=0.2,
    )
    return replace(config, **changes)


def expected_record(request_id: str, user_id: str = "u1") -> ShadowRecord:
    metrics = agreement(
        CHAMPION.items,
        CHALLENGER.items,
        4,
        champion_scores=CHAMPION.scores,
        challenger_scores=CHALLENGER.scores,
    )
    return ShadowRecord(request_id, user_id, NOW, 4, CHAMPION, CHALLENGER, None, metrics)


async def poll(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
