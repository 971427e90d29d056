"""The search's two retrievers: BM25 over the items' words, and the item space (the query
encoded by the item tower as an item with no id, then the nearest items in the FAISS index)."""
from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from recsys.errors import VectorSearchError
from recsys.features import PAD, tokenize_title
from recsys.models.index import ItemIndex
from recsys.search.fusion import Ranked
from recsys.search.index import SearchIndex
from recsys.search.query import ParsedQuery

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
FILTERED_OVERFETCH = 5  # with a filter, the vector retriever reads this many times k first


class QueryRetriever(Protocol):
    """Rows for a parsed query, best first; `allowed` [n+1] masks the rows a filter lets
    through (None: no filter)."""

    name: str

    def retrieve(self, query: ParsedQuery, allowed: BoolArray | None) -> Ranked: ...


class TextRetriever:
    """BM25 (bm25s, Lucene's variant) over each item's title and genre names; items that
    share no word with the query are never returned."""

    name = "bm25"

    def __init__(self, index: SearchIndex, k: int) -> None:
        self.index, self.k = index, k

    def retrieve(self, query: ParsedQuery, allowed: BoolArray | None) -> Ranked:
        ids = sorted({self.index.vocabulary[w] for w in query.words
                      if w in self.index.vocabulary})
        if not ids:
            return Ranked.empty()
        scores = self.index.bm25.get_scores_from_ids(ids)  # [n]: rows 1..n
        if allowed is not None:
            scores = scores * allowed[1:]
        hits = np.flatnonzero(scores > 0)
        if hits.size > self.k:
            hits = hits[np.argpartition(-scores[hits], self.k - 1)[:self.k]]
        rows = (hits + 1).astype(np.int64)
        order = np.lexsort((rows, -self.index.catalog.popularity[rows], -scores[hits]))
        return Ranked(rows[order], scores[hits][order].astype(np.float32))


class QueryEncoder:
    """The embedding bundle's ONNX item tower reading a query as an item: id PAD, the genres
    the query names, its words hashed as a title is (recsys.features.tokenize_title)."""

    def __init__(self, session: ort.InferenceSession, genres: int, title_buckets: int,
                 title_tokens: int) -> None:
        self.session, self.genres = session, genres
        self.title_buckets, self.title_tokens = title_buckets, title_tokens

    def encode(self, query: ParsedQuery) -> FloatArray:
        """[1, D] the query's vector in the item space."""
        genres = np.zeros((1, self.genres), dtype=np.float32)
        genres[0, list(query.categories)] = 1.0
        title = tokenize_title(" ".join(query.words), self.title_buckets, self.title_tokens)
        feeds = {"item": np.full(1, PAD, dtype=np.int64), "genres": genres,
                 "title_tokens": title[None, :]}
        try:
            out = self.session.run(["item_vector"], feeds)[0]
        except Exception as error:  # onnxruntime raises its own pybind types; name them as ours
            raise VectorSearchError(f"item tower failed on a query: {error}") from error
        return np.ascontiguousarray(out, dtype=np.float32)


class VectorRetriever:
    """The items nearest the query's vector (inner product, the bundle's FAISS index)."""

    name = "vector"

    def __init__(self, encoder: QueryEncoder, index: ItemIndex, k: int) -> None:
        self.encoder, self.index, self.k = encoder, index, k

    def retrieve(self, query: ParsedQuery, allowed: BoolArray | None) -> Ranked:
        wanted = self.k if allowed is None else self.k * FILTERED_OVERFETCH
        scores, ids = self.index.search(self.encoder.encode(query), wanted)
        rows, similarity = ids[0], scores[0]
        keep = rows > PAD
        if allowed is not None:
            keep &= allowed[np.maximum(rows, 0)]
        return Ranked(rows[keep][:self.k].astype(np.int64), similarity[keep][:self.k])
