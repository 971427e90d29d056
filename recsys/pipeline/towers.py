"""User towers: a user's padded history and attribute ids in, a user vector out, wherever the
model runs (in this process here; in a batched model service: serving/remote.py)."""
from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from recsys.models.bundles import EmbeddingBundle, UserTowerBundle

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


class UserTower(Protocol):
    async def encode(self, history: IntArray, attributes: IntArray) -> FloatArray:
        """[B, D] user vectors from padded histories [B, H] and attribute ids [B, A]; raises a
        RecsysError when the model cannot answer."""
        ...


class LocalUserTower:
    """The bundle's ONNX user tower, run in this process."""

    def __init__(self, bundle: EmbeddingBundle | UserTowerBundle) -> None:
        self.bundle = bundle

    async def encode(self, history: IntArray, attributes: IntArray) -> FloatArray:
        return self.bundle.encode_users(history, attributes)
