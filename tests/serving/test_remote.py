"""The services topology's adapters turn a failed call to a model service into the stage error
its fallback catches (a ranker error: retrieval order; a user tower error: the mean of the
items), and let a bug of this process through as itself.

The failures are the exceptions the BentoML client raises (its own, aiohttp's, and the
RuntimeError aiohttp's StreamReader raises when a connection closes mid-body, which answered a
/recommend with 500 in the chaos suite), raised by a stand-in for the client's `to_async`."""
from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import bentoml
import numpy as np
import pytest

from recsys.errors import RankingError, UserTowerError
from serving.remote import RemoteScorer, RemoteUserTower


class FailingClient:
    """What `service.to_async.call` does when the call fails with `error`."""

    def __init__(self, error: BaseException) -> None:
        self.to_async = self
        self.error = error

    async def call(self, api: str, *args: Any) -> Any:
        raise self.error


TRANSPORT = [bentoml.exceptions.ServiceUnavailable("overloaded"),
             aiohttp.ServerDisconnectedError(), aiohttp.ClientPayloadError("cut"),
             RuntimeError("Connection closed.")]


@pytest.mark.parametrize("error", TRANSPORT, ids=lambda e: type(e).__name__)
def test_a_failed_call_is_the_stage_error_its_fallback_catches(error: BaseException) -> None:
    features = np.zeros((2, 3), dtype=np.float32)
    history, attributes = np.zeros((1, 4), dtype=np.int64), np.zeros((1, 1), dtype=np.int64)
    with pytest.raises(RankingError, match="ranker service"):
        asyncio.run(RemoteScorer(FailingClient(error), "champion").score(features))
    with pytest.raises(UserTowerError, match="user tower service"):
        asyncio.run(RemoteUserTower(FailingClient(error), "champion").encode(history, attributes))


def test_a_bug_is_not_taken_for_a_failed_call() -> None:
    bug = RuntimeError("dictionary changed size during iteration")
    with pytest.raises(RuntimeError, match="dictionary changed size"):
        asyncio.run(RemoteScorer(FailingClient(bug), "champion").score(np.zeros((1, 3))))
