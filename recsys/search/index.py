"""One catalogue's search index, built once when a model slot loads: the words of every item
(title, genre names) under BM25, the titles' words for typo correction and for telling a title
from a category, the years of the titles, and which items have each genre."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import bm25s
import numpy as np
import numpy.typing as npt

from recsys.features import PAD, ItemCatalog
from recsys.search.categories import CategoryWords, Decades
from recsys.search.text import title_year, tokenize
from recsys.search.typos import TypoCorrector

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
logging.getLogger("bm25s").setLevel(logging.WARNING)  # it sets DEBUG on itself at import


@dataclass(frozen=True)
class Postings:
    """word id -> the sorted catalogue rows whose title holds the word (CSR)."""

    indptr: IntArray  # [V + 1]
    rows: npt.NDArray[np.int32]  # [nnz]

    def of(self, word_id: int) -> npt.NDArray[np.int32]:
        return self.rows[self.indptr[word_id]:self.indptr[word_id + 1]]

    @classmethod
    def build(cls, word_ids: IntArray, rows: IntArray, vocabulary_size: int) -> Postings:
        pairs = np.unique(np.stack([word_ids, rows], axis=1), axis=0)  # sorted by word, row
        indptr = np.zeros(vocabulary_size + 1, dtype=np.int64)
        np.cumsum(np.bincount(pairs[:, 0], minlength=vocabulary_size), out=indptr[1:])
        return cls(indptr, np.ascontiguousarray(pairs[:, 1], dtype=np.int32))


@dataclass(frozen=True)
class SearchIndex:
    catalog: ItemCatalog
    vocabulary: dict[str, int]  # word -> id: the BM25 columns, titles' and genre names' words
    bm25: bm25s.BM25  # documents are catalogue rows 1..n (document j is row j + 1)
    titles: Postings
    category_words: frozenset[str]  # the words of the category aliases ("scifi", "thrillers")
    corrector: TypoCorrector
    categories: CategoryWords
    decades: Decades
    years: npt.NDArray[np.int32]  # [n+1] the year each title ends with, 0 = none
    genre_rows: BoolArray  # [G, n+1] whether each row has each genre (row 0 never)

    @property
    def size(self) -> int:
        return self.catalog.size

    def knows(self, word: str) -> bool:
        """Whether a word is the index's own (never corrected as a typo)."""
        return word in self.vocabulary or word in self.category_words

    def title_has_all(self, words: list[str]) -> bool:
        """Whether one title holds every word (the query reads as a title)."""
        ids = [self.vocabulary.get(w) for w in words]
        if not ids or any(i is None for i in ids):
            return False
        lists = sorted((self.titles.of(i) for i in ids if i is not None), key=len)
        rows = lists[0]
        for other in lists[1:]:
            at = np.minimum(np.searchsorted(other, rows), max(len(other) - 1, 0))
            rows = rows[other[at] == rows] if len(other) else rows[:0]
            if rows.size == 0:
                return False
        return rows.size > 0


def build_search_index(catalog: ItemCatalog, typo_similarity: float) -> SearchIndex:
    """The index of `catalog`; `typo_similarity` as TypoCorrector's (0-100)."""
    genre_words = [tokenize(name) for name in catalog.genre_vocab]
    has_genre = catalog.genres[1:] > 0
    titles = [tokenize(str(t)) for t in catalog.titles[1:]]
    vocabulary: dict[str, int] = {}
    documents, title_ids, title_rows = [], [], []
    for position, (words, genres) in enumerate(zip(titles, has_genre)):
        ids = [vocabulary.setdefault(w, len(vocabulary)) for w in words]
        title_ids += ids
        title_rows += [position + 1] * len(ids)
        for column in np.flatnonzero(genres):
            ids = ids + [vocabulary.setdefault(w, len(vocabulary)) for w in genre_words[column]]
        documents.append(ids)
    bm25 = bm25s.BM25(backend="numpy", csc_backend="numpy")  # numpy only: no scipy to serve
    bm25.index((documents, vocabulary), create_empty_token=False, show_progress=False)
    postings = Postings.build(np.asarray(title_ids, dtype=np.int64),
                              np.asarray(title_rows, dtype=np.int64), len(vocabulary))
    categories = CategoryWords.from_genres(catalog.genre_vocab,
                                           np.flatnonzero(has_genre.any(axis=0)).tolist())
    years = np.asarray([0] + [title_year(str(t)) for t in catalog.titles[1:]], dtype=np.int32)
    known_years = years[years > 0]
    genre_rows = np.zeros((len(catalog.genre_vocab), catalog.size + 1), dtype=bool)
    genre_rows[:, 1:] = has_genre.T
    return SearchIndex(
        catalog=catalog, vocabulary=vocabulary, bm25=bm25, titles=postings,
        category_words=frozenset(categories.words),
        corrector=_corrector(vocabulary, postings, categories, typo_similarity),
        categories=categories,
        decades=Decades(int(known_years.min()), int(known_years.max())) if known_years.size
        else Decades(),
        years=years, genre_rows=genre_rows)


def _corrector(vocabulary: dict[str, int], titles: Postings, categories: CategoryWords,
               similarity: float) -> TypoCorrector:
    """Typos are corrected towards the titles' words and the category aliases, never towards
    a number; a word's weight is the number of titles that hold it."""
    title_counts = np.diff(titles.indptr)
    counts = {w: int(title_counts[i]) for w, i in vocabulary.items() if title_counts[i]}
    for word in categories.words:
        counts[word] = counts.get(word, 0) + 1
    words = sorted(w for w in counts if not w.isdigit())
    return TypoCorrector(words, [counts[w] for w in words], similarity)


def row_mask(index: SearchIndex, all_of: tuple[int, ...], any_of: tuple[int, ...],
             years: tuple[int, int] | None) -> BoolArray:
    """[n+1] the rows that pass: every genre of `all_of`, one of `any_of` (when given), a year
    in `years` (inclusive; a title without a year never passes). Row 0 never passes."""
    mask = np.ones(index.size + 1, dtype=bool)
    mask[PAD] = False
    if all_of:
        mask &= index.genre_rows[list(all_of)].all(axis=0)
    if any_of:
        mask &= index.genre_rows[list(any_of)].any(axis=0)
    if years is not None:
        mask &= (index.years >= years[0]) & (index.years <= years[1])
    return mask
