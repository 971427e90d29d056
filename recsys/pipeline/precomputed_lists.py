"""/recommend's precomputed tier (RECSYS_PRECOMPUTED_TIER): on a cache miss, the list the batch
job wrote (batch/) is served before anything is computed, for the requests it answers."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from recsys.context import Context
from recsys.pipeline.request import RecommendRequest
from recsys.pipeline.resolver import ResolvedRequest
from recsys.stores.precomputed import PrecomputedTier

NO_CONTEXT = Context()


def answerable(request: RecommendRequest) -> bool:
    """A request the batch job's lists answer: a user id and k, nothing that changes the list
    (recent items, context, filters, exclusions) and no explanations."""
    return not (request.recent_items or request.include_categories or request.exclude_categories
                or request.exclude_items or request.explain or request.context != NO_CONTEXT)


class TierThenCompute:
    """A cache miss's fill: the precomputed list when the tier holds a current one for the
    request's models and user, else `compute`. `served` says which answered."""

    def __init__(self, tier: PrecomputedTier | None, resolved: ResolvedRequest,
                 compute: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self.tier, self.resolved, self.compute = tier, resolved, compute
        self.served = False

    async def __call__(self) -> dict[str, Any]:
        request = self.resolved.request
        if self.tier is not None and answerable(request):
            found = await self.tier.read(self.resolved.slot.versions, request.user_id, request.k)
            if found is not None:
                self.served = True
                return found
        return await self.compute()
