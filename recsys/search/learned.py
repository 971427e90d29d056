"""The learned search ranking: the first fused candidates ordered by a model of query match,
the user's taste and popularity, trained on queries from the training events
(training/search_ranker.py) and kept only where it beat fusion alone on validation queries.

Features of one candidate (SEARCH_FEATURES): for each retriever, 1 / (1 + its rank there) and
its score there (0 where it did not find the item; BM25 scaled by the query's best, the user's
taste as the inner product with every candidate); whether the query is personalised; the fused
rank; the share of the query's words in the title, and whether the title is exactly those
words; the log of the item's training popularity. The model (a scaler and a logistic regression,
one ONNX graph) turns them into a score; the candidates past RERANKED keep their fused order.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from recsys.errors import RankingError
from recsys.models import artifacts
from recsys.models.onnx_runtime import create_session
from recsys.search.fusion import Fused, Ranked
from recsys.search.index import SearchIndex
from recsys.search.query import ParsedQuery

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]

SEARCH_RANKER = "search_ranker.onnx"  # in the embedding bundle, beside the towers it reads
RETRIEVERS = ("bm25", "vector", "personal")
_CANDIDATE_FEATURES = (
    "bm25_reciprocal_rank", "bm25_relative_score",
    "vector_reciprocal_rank", "vector_score",
    "personal_reciprocal_rank", "personal_score",
    "personalised", "fused_reciprocal_rank",
    "title_coverage", "exact_title", "log_popularity", "names_category",
)
# A query that names a category ("horror") asks for something else than one that names a title:
# these features count again for such queries only (a linear model's interaction terms).
FOR_CATEGORY = ("personal_reciprocal_rank", "personal_score", "vector_score",
                "fused_reciprocal_rank", "log_popularity")
SEARCH_FEATURES: tuple[str, ...] = (*_CANDIDATE_FEATURES,
                                    *(f"{name}_if_category" for name in FOR_CATEGORY))
RERANKED = 50


@dataclass(frozen=True)
class TitleWords:
    """What the title features read from the search index: which rows have each word in their
    title, and how many distinct words each title has."""

    index: SearchIndex
    lengths: IntArray  # [n+1]

    @classmethod
    def of(cls, index: SearchIndex) -> TitleWords:
        words = np.bincount(index.titles.rows, minlength=index.size + 1).astype(np.int64)
        return cls(index, words - (index.years > 0))  # a title's year is not a word asked for

    def coverage(self, words: tuple[str, ...], rows: IntArray) -> tuple[FloatArray, FloatArray]:
        """(share of the query's distinct words in each row's title, whether the title is
        exactly those words) for `rows`."""
        ids = sorted({self.index.vocabulary[w] for w in words if w in self.index.vocabulary})
        if not words or rows.size == 0:
            zeros = np.zeros(rows.size, dtype=np.float32)
            return zeros, zeros
        hits = np.zeros(rows.size, dtype=np.int64)
        for word_id in ids:
            hits += np.isin(rows, self.index.titles.of(word_id))
        distinct = len(set(words))
        exact = (hits == distinct) & (self.lengths[rows] == distinct)
        return (hits / distinct).astype(np.float32), exact.astype(np.float32)


def candidate_features(rows: IntArray, lists: Mapping[str, Ranked], query: ParsedQuery,
                       titles: TitleWords, item_vectors: FloatArray, user: FloatArray | None,
                       popularity: FloatArray) -> FloatArray:
    """[len(rows), len(SEARCH_FEATURES)] for the fused candidates `rows`, best first."""
    columns: list[FloatArray] = []
    for name in RETRIEVERS:
        reciprocal, score = np.zeros(rows.size, np.float32), np.zeros(rows.size, np.float32)
        found = lists.get(name)
        if found is not None and found.rows.size:
            position = {int(r): i for i, r in enumerate(found.rows.tolist())}
            at = np.array([position.get(int(r), -1) for r in rows.tolist()], dtype=np.int64)
            held = at >= 0
            reciprocal[held] = 1.0 / (1.0 + at[held])
            scores = found.scores / max(float(found.scores[0]), 1e-6) if name == "bm25" \
                else found.scores
            score[held] = scores[at[held]]
        if name == "personal" and user is not None:
            score = (item_vectors[rows] @ user).astype(np.float32)
        columns += [reciprocal, score]
    coverage, exact = titles.coverage(query.words, rows)
    category = float(bool(query.categories))
    columns += [np.full(rows.size, float(user is not None), np.float32),
                (1.0 / (1.0 + np.arange(rows.size))).astype(np.float32), coverage, exact,
                np.log1p(popularity[rows]).astype(np.float32),
                np.full(rows.size, category, np.float32)]
    named = dict(zip(_CANDIDATE_FEATURES, columns))
    columns += [named[name] * category for name in FOR_CATEGORY]
    return np.stack(columns, axis=1).astype(np.float32)


class SearchRanking(Protocol):
    """What /search asks of a learned order (SearchRanker, or a fault-injecting wrapper)."""

    def reorder(self, fused: Fused, lists: Mapping[str, Ranked], query: ParsedQuery,
                item_vectors: FloatArray, user: FloatArray | None,
                popularity: FloatArray) -> Fused: ...


@dataclass(frozen=True)
class SearchRanker:
    """The ONNX model: features [N, F] → probabilities [N, 2]; the second column scores."""

    session: ort.InferenceSession
    titles: TitleWords

    @classmethod
    def load(cls, bundle: Path, index: SearchIndex, threads: int = 1) -> SearchRanker:
        return cls(create_session(bundle / SEARCH_RANKER, intra_op_threads=threads,
                                  prefer_gpu=False), TitleWords.of(index))

    def score(self, features: FloatArray) -> FloatArray:
        try:
            out = self.session.run(["probabilities"], {"features": features})[0]
        except Exception as error:  # onnxruntime's own pybind types, named as ours
            raise RankingError(f"search ranker: onnxruntime failed: {error}") from error
        return np.asarray(out[:, 1], dtype=np.float32)

    def check_parity(self, bundle: Path) -> float | None:
        """The loaded model's scores on training's parity sample (ArtifactError above
        tolerance); None when the bundle has no sample."""
        sample = artifacts.load_parity(bundle, SEARCH_RANKER)
        if sample is None:
            return None
        feeds, expected = sample
        return artifacts.check_parity(bundle, SEARCH_RANKER, self.score(feeds["features"]),
                                      expected)

    def reorder(self, fused: Fused, lists: Mapping[str, Ranked], query: ParsedQuery,
                item_vectors: FloatArray, user: FloatArray | None,
                popularity: FloatArray) -> Fused:
        """The first RERANKED of `fused` by the model's score, then the rest in fused order,
        their scores scaled under the last learned one so that scores still fall down the list.
        RankingError when the model fails."""
        head = fused.rows[:RERANKED]
        scores = self.score(candidate_features(head, lists, query, self.titles, item_vectors,
                                               user, popularity))
        order = np.argsort(-scores, kind="stable")
        tail = fused.scores[RERANKED:]
        if tail.size:
            tail = tail * (float(scores[order[-1]]) / max(float(tail[0]), 1e-12)) * 0.999
        return Fused(np.concatenate([head[order], fused.rows[RERANKED:]]),
                     np.concatenate([scores[order], tail]).astype(np.float32), fused.names,
                     np.concatenate([fused.found[:RERANKED][order], fused.found[RERANKED:]]))
