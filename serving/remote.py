"""The pipeline's ranker and user-tower callables when the models run in their own services."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import bentoml

with bentoml.importing():
    import numpy as np

    from recsys.errors import RankingError, RecsysError

# A model service call fails with a BentoMLException (503 overload, 5xx) or, on the transport
# (a keep-alive connection the server closed), with an aiohttp error.
REMOTE_ERRORS = (bentoml.exceptions.BentoMLException, aiohttp.ClientError)


def remote_ranker(service: Any, alias: str) -> Callable[[np.ndarray], Awaitable[np.ndarray]]:
    """features [N, F] -> scores [N] on the ranker service; failures raise RankingError."""
    async def score(features: np.ndarray) -> np.ndarray:
        try:
            return await service.to_async.call(f"score_{alias}", features)
        except REMOTE_ERRORS as error:
            raise RankingError(f"ranker service: {error!r}") from error
    return score


def remote_tower(service: Any, alias: str) -> Callable[[np.ndarray, np.ndarray],
                                                          Awaitable[np.ndarray]]:
    """(history [B, H], attributes [B, A]) -> [B, D] on the tower service; failures raise
    RecsysError (the pipeline then falls back to a mean-of-items vector)."""
    async def encode(history: np.ndarray, attributes: np.ndarray) -> np.ndarray:
        packed = np.concatenate([history, attributes], axis=1)
        try:
            return await service.to_async.call(f"encode_{alias}", packed)
        except REMOTE_ERRORS as error:
            raise RecsysError(f"user tower service: {error!r}") from error
    return encode
