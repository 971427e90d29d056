"""What a /search answer is made of: one page of the fused ranking, and what the query was
understood as."""
from __future__ import annotations

from typing import Any

from recsys.pipeline.search_request import SearchRequest
from recsys.pipeline.slots import ModelSlot
from recsys.search.fusion import Fused
from recsys.search.query import ParsedQuery


def understood(slot: ModelSlot, query: ParsedQuery) -> dict[str, Any]:
    """The words searched for, the typos corrected, and the filters the query itself named."""
    years = query.years
    return {"words": list(query.words), "corrections": dict(query.corrections),
            "categories": [slot.catalog.genre_vocab[c] for c in query.categories],
            "year_from": years[0] if years else None, "year_to": years[1] if years else None}


def page_items(slot: ModelSlot, fused: Fused, request: SearchRequest) -> list[dict[str, Any]]:
    """The request's page of `fused`: ranks count from the first result of the first page."""
    start = (request.page - 1) * request.page_size
    catalog = slot.catalog
    return [{"item_id": str(catalog.item_ids[fused.rows[p]]),
             "title": str(catalog.titles[fused.rows[p]]),
             "score": round(float(fused.scores[p]), 6), "rank": p + 1,
             "retrievers": fused.found_by(p)}
            for p in range(start, min(start + request.page_size, len(fused.rows)))]


def search_result(slot: ModelSlot, request: SearchRequest, query: ParsedQuery, fused: Fused,
                  personalised: bool, reasons: list[str], ranking: str = "fusion",
                  ) -> dict[str, Any]:
    return {"query": request.query, "items": page_items(slot, fused, request),
            "total": len(fused.rows), "page": request.page,
            "page_size": request.page_size, "understood": understood(slot, query),
            "personalised": personalised, "ranking": ranking, "model_versions": slot.versions,
            "degraded": bool(reasons), "degraded_reasons": reasons}
