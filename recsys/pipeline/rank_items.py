"""POST /rank: the ranker's scores for items the client names, for one user (CTR-style)."""
from __future__ import annotations

from typing import Any

import numpy as np

from recsys.context import Context
from recsys.features import user_ranker_inputs
from recsys.pipeline.resolver import RequestResolver


class ItemListRanker:
    def __init__(self, resolver: RequestResolver) -> None:
        self.resolver = resolver

    async def rank_items(self, user_id: str, item_ids: tuple[str, ...],
                         context: Context) -> dict[str, Any]:
        """Scores of `item_ids` in the order given, by the ranker of the slot the user is
        routed to (degrading like /recommend); UnknownIdError for an id not in its catalogue."""
        routed = self.resolver.route(user_id)
        slot = routed.slot
        rows = slot.rows_of(item_ids, "item_ids")
        reasons: list[str] = []
        state = await self.resolver.user_state(slot, user_id, rows[:0], reasons)
        user = await self.resolver.user_vector(slot, state, reasons)
        features = user_ranker_inputs(user, state.history, rows, slot.embedding.item_vectors,
                                      slot.catalog, state.context(context), slot.scaler)
        similarity = (slot.embedding.item_vectors[rows] @ user).astype(np.float32)
        outcome = await slot.ranker.rank(features, similarity)
        if outcome.reason:
            reasons.append(outcome.reason)
        return {"user_id": user_id, "variant": routed.variant, "model_versions": slot.versions,
                "scores": [{"item_id": i, "score": round(float(s), 6)}
                           for i, s in zip(item_ids, outcome.scores)],
                "ranker": outcome.ranker, "degraded": bool(reasons), "degraded_reasons": reasons}
