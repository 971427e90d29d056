"""One search request as the pipeline sees it: the query and ids as the client sent them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SearchRequest:
    query: str
    user_id: str | None = None  # None: no user; query relevance alone orders the results
    recent_items: tuple[str, ...] = ()  # personalise by these too (or alone, without a user)
    categories: tuple[str, ...] = ()  # an item must have one of them
    year_from: int | None = None  # inclusive; a title without a year never passes a year filter
    year_to: int | None = None
    page: int = 1  # from 1
    page_size: int = 10

    @property
    def years(self) -> tuple[int, int] | None:
        if self.year_from is None and self.year_to is None:
            return None
        return (self.year_from if self.year_from is not None else 0,
                self.year_to if self.year_to is not None else 9999)

    def cache_fields(self, normalised_query: str) -> dict[str, Any]:
        """The request for cache keys, its query as normalised (case, accents, punctuation)."""
        return {"query": normalised_query, "user": self.user_id, "recent": list(self.recent_items),
                "categories": sorted(set(self.categories)), "years": self.years,
                "page": self.page, "page_size": self.page_size}
