"""Per-user item sequences in time order, the shape every trainer and the evaluator consume."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from training.data.order import time_ordered
from training.data.schema import ITEM_ID, TIMESTAMP, USER_ID


@dataclass(frozen=True)
class UserSequences:
    """sequences[u] are catalogue rows of user_ids[u]'s events, oldest first."""

    user_ids: list[str]
    sequences: list[np.ndarray]
    timestamps: list[np.ndarray]

    def position(self) -> dict[str, int]:
        return {user: i for i, user in enumerate(self.user_ids)}


def build_sequences(
    interactions: pd.DataFrame, item_rows: dict[str, int], user_ids: list[str] | None = None
) -> UserSequences:
    """Group `interactions` by user in the one time order (training/data/order.py).

    Items without a catalogue row are dropped. With `user_ids`, users come in that order and
    users with no events get empty sequences.
    """
    ordered = time_ordered(interactions)
    rows = ordered[ITEM_ID].astype(str).map(item_rows)
    known = rows.notna().to_numpy()
    users = ordered[USER_ID].astype(str).to_numpy()[known]
    items = rows.to_numpy()[known].astype(np.int64)
    times = ordered[TIMESTAMP].to_numpy()[known].astype(np.int64)
    boundaries = np.flatnonzero(users[1:] != users[:-1]) + 1
    starts = np.concatenate([[0], boundaries]) if len(users) else np.array([], dtype=np.int64)
    ends = np.concatenate([boundaries, [len(users)]]) if len(users) else starts
    by_user = {users[s]: (items[s:e], times[s:e]) for s, e in zip(starts, ends)}
    order = user_ids if user_ids is not None else list(by_user)
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    pairs = [by_user.get(u, empty) for u in order]
    return UserSequences(list(order), [p[0] for p in pairs], [p[1] for p in pairs])


def concat_sequences(first: UserSequences, second: UserSequences) -> UserSequences:
    """Append `second`'s events after `first`'s for the users of `first` (e.g. train + validation)."""
    lookup = second.position()
    seqs, times = [], []
    for user, seq, ts in zip(first.user_ids, first.sequences, first.timestamps):
        j = lookup.get(user)
        if j is None:
            seqs.append(seq)
            times.append(ts)
        else:
            seqs.append(np.concatenate([seq, second.sequences[j]]))
            times.append(np.concatenate([ts, second.timestamps[j]]))
    return UserSequences(first.user_ids, seqs, times)
