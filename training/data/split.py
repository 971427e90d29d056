"""Time-ordered leave-last-out split of an interaction log."""
from __future__ import annotations

import numpy as np
import pandas as pd

from recsys.errors import DataError
from training.data.order import time_ordered
from training.data.schema import TIMESTAMP, USER_ID, Split

MIN_EVENTS_TO_SPLIT = 3


def leave_last_out(interactions: pd.DataFrame) -> Split:
    """Per user, in time order: last event → test, the one before → validation, the rest → train.

    Ties on timestamp are broken by a salted hash of (user, item) (training/data/order.py), so
    the split is the same whatever the input's row order. Users with fewer than 3 events stay
    entirely in train. Each part is sorted by (user, time) with a
    fresh RangeIndex and the input's columns.
    """
    missing = [c for c in (USER_ID, TIMESTAMP) if c not in interactions.columns]
    if missing:
        raise DataError(f"interactions are missing column(s) {missing}, expected "
                        f"{USER_ID!r} and {TIMESTAMP!r} to split by user and time")
    ordered = _time_ordered(interactions)
    from_end = _positions_from_end(ordered)
    return Split(
        train=_part(ordered, from_end >= 2),
        validation=_part(ordered, from_end == 1),
        test=_part(ordered, from_end == 0),
    )


def _time_ordered(interactions: pd.DataFrame) -> pd.DataFrame:
    return time_ordered(interactions.reset_index(drop=True))


def _positions_from_end(ordered: pd.DataFrame) -> np.ndarray:
    """0 for a user's last event, 1 for the one before, ...; large for users too short to split."""
    grouped = ordered.groupby(USER_ID, sort=False)[TIMESTAMP]
    from_end = grouped.cumcount(ascending=False).to_numpy()
    too_short = grouped.transform("size").to_numpy() < MIN_EVENTS_TO_SPLIT
    return np.where(too_short, np.iinfo(np.int64).max, from_end)


def _part(ordered: pd.DataFrame, mask: np.ndarray) -> pd.DataFrame:
    return ordered.loc[mask].reset_index(drop=True)
