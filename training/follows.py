"""Counts what followed each item in users' histories: the catalogue's FollowTable."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse

from recsys.follows import FollowTable

FOLLOW_WINDOW = 5  # an item follows another when it comes within this many events after it
FOLLOWS_KEPT = 1024  # the most entries a row keeps (its largest shares): bounds the table's size


def count_follows(sequences: Sequence[np.ndarray], n_rows: int, window: int = FOLLOW_WINDOW,
                  kept: int = FOLLOWS_KEPT) -> FollowTable:
    """The FollowTable of time-ordered histories of catalogue rows (`n_rows` rows, padding
    included): for rows i and j, the share of i's events that j came within `window` events
    after, in the same user's history; each row keeps its `kept` largest shares (ties: the
    lower row)."""
    firsts, thens = [], []
    for history in sequences:
        for step in range(1, window + 1):
            firsts.append(history[:-step])
            thens.append(history[step:])
    first = np.concatenate(firsts or [np.zeros(0, np.int64)]).astype(np.int64)
    then = np.concatenate(thens or [np.zeros(0, np.int64)]).astype(np.int64)
    counts = sparse.csr_matrix((np.ones(len(first), dtype=np.float32), (first, then)),
                               shape=(n_rows, n_rows))
    counts.sum_duplicates()
    events = np.bincount(np.concatenate(list(sequences) or [np.zeros(0, np.int64)]),
                         minlength=n_rows).astype(np.float32)
    indptr, items, shares = [0], [], []
    for row in range(n_rows):
        start, end = counts.indptr[row], counts.indptr[row + 1]
        columns = counts.indices[start:end].astype(np.int64)
        values = counts.data[start:end] / max(events[row], 1.0)
        if len(columns) > kept:
            top = np.lexsort((columns, -values))[:kept]
            columns, values = columns[top], values[top]
        order = np.argsort(columns)
        items.append(columns[order])
        shares.append(values[order].astype(np.float32))
        indptr.append(indptr[-1] + len(columns))
    return FollowTable(np.asarray(indptr, dtype=np.int64),
                       np.concatenate(items) if items else np.zeros(0, np.int64),
                       np.concatenate(shares) if shares else np.zeros(0, np.float32))
