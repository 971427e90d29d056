"""The user tower and ranker adapters of the `services` topology: calls to the batched model
services (serving/model_services.py), failures raised as the project's stage errors."""
from __future__ import annotations

from typing import Any

import aiohttp
import bentoml

with bentoml.importing():
    import numpy as np
    import numpy.typing as npt

    from recsys.errors import RankingError, UserTowerError

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]
# A model service call fails with a BentoMLException (503 overload, 5xx) or, on the transport
# (a keep-alive connection the server closed), with an aiohttp error, or with the RuntimeError
# aiohttp's StreamReader raises when the connection closes while a body is read (seen in the
# chaos suite after a Redis restart: a /recommend answered 500 instead of falling back).
REMOTE_ERRORS = (bentoml.exceptions.BentoMLException, aiohttp.ClientError)
CONNECTION_CLOSED = "Connection closed"


def transport_failure(error: BaseException) -> bool:
    """Whether `error` is a failed call to a model service, not a bug of this process."""
    return isinstance(error, REMOTE_ERRORS) or (
        isinstance(error, RuntimeError) and str(error).startswith(CONNECTION_CLOSED))


async def call_model_service(service: Any, api: str, payload: Any,
                             failed: type[Exception], what: str) -> Any:
    """`service`'s `api` on `payload`; a failed call raised as `failed` (the stage error its
    fallback catches), anything else as itself."""
    try:
        return await service.to_async.call(api, payload)
    except (*REMOTE_ERRORS, RuntimeError) as error:
        if not transport_failure(error):
            raise
        raise failed(f"{what}: {error!r}") from error


class RemoteScorer:
    """features [N, F] -> scores [N] on the ranker service's API of one alias."""

    def __init__(self, service: Any, alias: str) -> None:
        self.service, self.api = service, f"score_{alias}"

    async def score(self, features: FloatArray) -> FloatArray:
        scores: FloatArray = await call_model_service(self.service, self.api, features,
                                                      RankingError, "ranker service")
        return scores


class RemoteUserTower:
    """(history [B, H], attributes [B, A]) -> [B, D] on the user tower service's API of one
    alias, sent as one array (history, then attributes): a batchable API takes one argument.
    H is the alias's own history length, which the service splits by."""

    def __init__(self, service: Any, alias: str) -> None:
        self.service, self.api = service, f"encode_{alias}"

    async def encode(self, history: IntArray, attributes: IntArray) -> FloatArray:
        packed = np.concatenate([history, attributes], axis=1)
        vectors: FloatArray = await call_model_service(self.service, self.api, packed,
                                                       UserTowerError, "user tower service")
        return vectors
