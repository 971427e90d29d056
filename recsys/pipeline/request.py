"""One recommendation request as the pipeline sees it: ids and categories as the client sent them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recsys.context import Context


@dataclass(frozen=True)
class RecommendRequest:
    user_id: str
    k: int
    recent_items: tuple[str, ...] = ()
    context: Context = field(default_factory=Context)
    include_categories: tuple[str, ...] = ()
    exclude_categories: tuple[str, ...] = ()
    exclude_items: tuple[str, ...] = ()
    explain: bool = False  # each item says why it is there (recsys/pipeline/explain.py)

    def cache_fields(self) -> dict[str, Any]:
        """The request normalised for cache keys: set-like lists sorted, the hour kept; an
        explained list is cached apart (the key of one that is not is as it always was)."""
        fields = {"user": self.user_id, "k": self.k, "recent": list(self.recent_items),
                  "hour": self.context.hour, "device": self.context.device,
                  "include": sorted(set(self.include_categories)),
                  "exclude_cat": sorted(set(self.exclude_categories)),
                  "exclude": sorted(set(self.exclude_items))}
        return {**fields, "explain": True} if self.explain else fields
