"""Typo tolerance: a word the vocabulary lacks, read as the vocabulary word closest to it.

Candidates come from an index of character trigrams (the vocabulary words that share the most
trigrams with the typed word); RapidFuzz scores those exactly. Scoring the whole vocabulary
would cost milliseconds a word at 100K titles' words.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from rapidfuzz import fuzz, process

IntArray = npt.NDArray[np.int64]
MIN_LENGTH = 3  # shorter words are too ambiguous to correct
CANDIDATES = 64  # words by shared trigrams, then scored by RapidFuzz
POSTINGS_READ = 50_000  # trigram postings read per word at most, rarest trigrams first


def trigrams(word: str) -> set[str]:
    padded = f"^{word}$"
    return {padded[i:i + 3] for i in range(len(padded) - 2)}


class TypoCorrector:
    """`similarity`: the least RapidFuzz `fuzz.ratio` (normalised Indel similarity, 0-100) a
    correction must reach; ties go to the word in more documents."""

    def __init__(self, words: Sequence[str], documents: Sequence[int], similarity: float) -> None:
        if not 0 <= similarity <= 100:
            raise ValueError(f"similarity must be in [0, 100], got {similarity}")
        self.words, self.similarity = list(words), similarity
        self.documents = np.asarray(documents, dtype=np.int64)
        grams: dict[str, int] = {}
        gram_ids, word_ids = [], []
        for position, word in enumerate(self.words):
            for gram in trigrams(word):
                gram_ids.append(grams.setdefault(gram, len(grams)))
                word_ids.append(position)
        order = np.argsort(np.asarray(gram_ids, dtype=np.int64), kind="stable")
        self.grams = grams
        self.postings = np.asarray(word_ids, dtype=np.int32)[order]
        self.indptr = np.zeros(len(grams) + 1, dtype=np.int64)
        np.cumsum(np.bincount(np.asarray(gram_ids, dtype=np.int64), minlength=len(grams)),
                  out=self.indptr[1:])

    def correct(self, word: str) -> str | None:
        """The vocabulary word `word` is read as; None when none is similar enough (or the
        word is a number or shorter than MIN_LENGTH)."""
        if len(word) < MIN_LENGTH or word.isdigit():
            return None
        candidates = self._candidates(word)
        if candidates.size == 0:
            return None
        found = process.extract(word, [self.words[i] for i in candidates], scorer=fuzz.ratio,
                                score_cutoff=self.similarity, limit=None)
        if not found:
            return None
        best = max(score for _, score, _ in found)
        tied = [candidates[p] for _, score, p in found if score == best]
        return self.words[max(tied, key=lambda i: (self.documents[i], -i))]

    def _candidates(self, word: str) -> npt.NDArray[np.int32]:
        """Vocabulary positions sharing the most trigrams with `word` (at most CANDIDATES)."""
        spans = sorted((self.indptr[g + 1] - self.indptr[g], g)
                       for g in (self.grams.get(t) for t in trigrams(word)) if g is not None)
        read, parts = 0, list[npt.NDArray[np.int32]]()
        for size, gram in spans:
            if parts and read + size > POSTINGS_READ:
                break
            parts.append(self.postings[self.indptr[gram]:self.indptr[gram + 1]])
            read += size
        if not parts:
            return np.zeros(0, dtype=np.int32)
        positions, shared = np.unique(np.concatenate(parts), return_counts=True)
        if positions.size > CANDIDATES:
            positions = positions[np.argpartition(-shared, CANDIDATES)[:CANDIDATES]]
        return positions
