"""The request's context as ranker features: the hour, the device, the time since the user's
last event."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

DEVICES = ("unknown", "web", "mobile", "tv")
MAX_HOURS_SINCE_LAST_EVENT = 720.0  # longer gaps, and an unknown one, count as 30 days
UNKNOWN_GAP_FEATURE = float(np.log1p(MAX_HOURS_SINCE_LAST_EVENT))  # its feature value

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Context:
    """Request context. hour is 0-23 local time or None when unknown; seconds_since_last_event
    is the time from the user's latest event to the request (None: unknown)."""

    hour: int | None = None
    device: str = "unknown"
    seconds_since_last_event: float | None = None


CONTEXT_FEATURES = 6


def context_features(contexts: Sequence[Context]) -> FloatArray:
    """[N, 6]: hour sin/cos (0 when unknown), device one-hot (web, mobile, tv) and log1p of the
    hours since the user's last event, capped at MAX_HOURS_SINCE_LAST_EVENT (unknown: the cap)."""
    out = np.zeros((len(contexts), CONTEXT_FEATURES), dtype=np.float32)
    for i, ctx in enumerate(contexts):
        gap = ctx.seconds_since_last_event
        out[i, 5] = UNKNOWN_GAP_FEATURE if gap is None else \
            np.log1p(min(max(0.0, gap) / 3600.0, MAX_HOURS_SINCE_LAST_EVENT))
        if ctx.hour is not None:
            angle = 2.0 * np.pi * (ctx.hour % 24) / 24.0
            out[i, 0], out[i, 1] = np.sin(angle), np.cos(angle)
        if ctx.device in DEVICES[1:]:
            out[i, 2 + DEVICES.index(ctx.device) - 1] = 1.0
    return out
