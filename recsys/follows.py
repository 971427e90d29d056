"""What users went on to watch after each item: the ranker's co-occurrence features."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
ARRAYS = ("follow_indptr", "follow_items", "follow_shares")  # their names in a catalogue file


@dataclass(frozen=True)
class FollowTable:
    """For each catalogue row i, the rows that came within a few events after i in a user's
    history, each with the share of i's events it followed (training/follows.py counts them).
    Sparse by rows: row i's entries are items[indptr[i]:indptr[i + 1]], sorted, with their
    shares alongside."""

    indptr: IntArray  # [n + 2]
    items: IntArray  # [nnz] catalogue rows
    shares: FloatArray  # [nnz] in (0, 1]

    def shares_after(self, recent: IntArray, candidates: IntArray) -> FloatArray:
        """[R, C]: the share of each recent row's events that each candidate followed; 0 where
        it never did, or the row is outside the table (a catalogue longer than the counts)."""
        out = np.zeros((len(recent), len(candidates)), dtype=np.float32)
        rows = len(self.indptr) - 1
        for k, row in enumerate(recent):
            if not 0 <= row < rows:
                continue
            start, end = int(self.indptr[row]), int(self.indptr[row + 1])
            if start == end:
                continue
            items = self.items[start:end]
            at = np.minimum(np.searchsorted(items, candidates), len(items) - 1)
            hit = items[at] == candidates
            out[k, hit] = self.shares[start:end][at[hit]]
        return out

    def features(self, recent: IntArray, candidates: IntArray) -> FloatArray:
        """[C, 2]: the largest and the mean share after the user's recent rows (0 without any)."""
        if recent.size == 0:
            return np.zeros((len(candidates), 2), dtype=np.float32)
        shares = self.shares_after(recent, candidates)
        return np.stack([shares.max(axis=0), shares.mean(axis=0)], axis=1)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return dict(zip(ARRAYS, (self.indptr, self.items, self.shares)))

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> FollowTable | None:
        """The table `to_arrays` wrote among a catalogue's arrays; None in one written before."""
        if not all(name in arrays for name in ARRAYS):
            return None
        indptr, items, shares = (arrays[name] for name in ARRAYS)
        return cls(np.asarray(indptr, dtype=np.int64), np.asarray(items, dtype=np.int64),
                   np.asarray(shares, dtype=np.float32))
