"""The documented data schema every loader produces and every trainer consumes.

interactions (one row per user-item event; duplicates of the same (user, item, timestamp) are dropped):
    user_id: str, item_id: str, rating: float32 (explicit rating or implicit weight, > 0),
    timestamp: int64 (unix seconds)
items (one row per item):
    item_id: str, title: str, genres: str ("|"-separated category names, "" when none),
    description: str (optional free text, "" when none)
users (optional, one row per user):
    user_id: str, then any categorical attribute columns (str), e.g. age_bucket, gender, occupation
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

USER_ID = "user_id"
ITEM_ID = "item_id"
RATING = "rating"
TIMESTAMP = "timestamp"
TITLE = "title"
GENRES = "genres"
DESCRIPTION = "description"
GENRE_SEPARATOR = "|"

INTERACTION_COLUMNS = (USER_ID, ITEM_ID, RATING, TIMESTAMP)
ITEM_COLUMNS = (ITEM_ID, TITLE, GENRES, DESCRIPTION)


@dataclass(frozen=True)
class Dataset:
    """A validated dataset: interactions, item metadata and optional user attributes."""

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame | None = None
    repairs: Mapping[str, int] = field(default_factory=dict)  # what validation repaired, by kind

    @property
    def user_attribute_columns(self) -> tuple[str, ...]:
        if self.users is None:
            return ()
        return tuple(c for c in self.users.columns if c != USER_ID)


@dataclass(frozen=True)
class Split:
    """Time-ordered leave-last-out split: per user, the last event is test, the one before validation.

    train holds every earlier event. Users with fewer than 3 events stay entirely in train.
    """

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
