"""Scorers: ranker features in, one score per candidate out, wherever the ranker runs (in this
process here; in a batched model service: serving/remote.py)."""
from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from recsys.models.bundles import RankerBundle

FloatArray = npt.NDArray[np.float32]


class Scorer(Protocol):
    async def score(self, features: FloatArray) -> FloatArray:
        """Scores [N], higher first, for ranker features [N, F]; raises a RecsysError when the
        model cannot answer."""
        ...


class LocalScorer:
    """The bundle's ONNX ranker, run in this process."""

    def __init__(self, bundle: RankerBundle) -> None:
        self.bundle = bundle

    async def score(self, features: FloatArray) -> FloatArray:
        return self.bundle.score(features)
