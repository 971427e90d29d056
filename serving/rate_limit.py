"""The HTTP edge's per-client rate limit (of /events): the `limits` library's moving window, in
this worker's memory."""
from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter


class ClientRateLimit:
    """A moving-window rate limit per client address (`limits`, in this process's memory)."""

    def __init__(self, rate: str) -> None:
        self.item: RateLimitItem = parse(rate)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    async def wait_s(self, client: str) -> int | None:
        """None when `client` may go on (this request counted), else whole seconds until its
        window lets one more through."""
        if await self.limiter.hit(self.item, client):
            return None
        stats = await self.limiter.get_window_stats(self.item, client)
        return max(1, math.ceil(stats.reset_time - time.time()))
