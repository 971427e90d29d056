"""One recommendation request as the pipeline sees it: ids and categories as the client sent them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recsys.features import Context


@dataclass(frozen=True)
class RecommendRequest:
    user_id: str
    k: int
    recent_items: tuple[str, ...] = ()
    context: Context = field(default_factory=Context)
    include_categories: tuple[str, ...] = ()
    exclude_categories: tuple[str, ...] = ()
    exclude_items: tuple[str, ...] = ()

    def cache_fields(self) -> dict[str, Any]:
        """The request normalised for cache keys: set-like lists sorted, the hour kept."""
        return {"user": self.user_id, "k": self.k, "recent": list(self.recent_items),
                "hour": self.context.hour, "device": self.context.device,
                "include": sorted(set(self.include_categories)),
                "exclude_cat": sorted(set(self.exclude_categories)),
                "exclude": sorted(set(self.exclude_items))}
