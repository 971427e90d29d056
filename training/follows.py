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
    counts.sort_indices()
    events = np.bincount(np.concatenate(list(sequences) or [np.zeros(0, np.int64)]),
                         minlength=n_rows).astype(np.float32)
    lengths = np.diff(counts.indptr)
    items = counts.indices.astype(np.int64)
    shares = (counts.data / np.maximum(np.repeat(events, lengths), 1.0)).astype(np.float32)
    keep = np.ones(len(items), dtype=bool)
    for row in np.flatnonzero(lengths > kept):  # the rows above the cap drop their smallest
        start, end = counts.indptr[row], counts.indptr[row + 1]
        dropped = np.lexsort((items[start:end], -shares[start:end]))[kept:]
        keep[start + dropped] = False
    kept_per_row = np.bincount(np.repeat(np.arange(n_rows), lengths)[keep], minlength=n_rows)
    indptr = np.concatenate([[0], np.cumsum(kept_per_row)])
    return FollowTable(indptr.astype(np.int64), items[keep], shares[keep])
