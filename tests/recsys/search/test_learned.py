"""The learned search ranking's features on a small catalogue: what each column says about a
candidate, for a title query and a category query, with and without a user."""
from __future__ import annotations

import numpy as np

from recsys.search.fusion import Ranked
from recsys.search.index import SearchIndex
from recsys.search.learned import FOR_CATEGORY, SEARCH_FEATURES, TitleWords, candidate_features
from recsys.search.query import QueryParser

TOY_STORY, ROCKY_HORROR, SCREAM, TOY_SOLDIERS = 1, 2, 3, 13


def column(features: np.ndarray, name: str) -> list[float]:
    return [round(float(v), 4) for v in features[:, SEARCH_FEATURES.index(name)]]


def test_title_words_cover_the_query_and_an_exact_title_ignores_its_year(
        index: SearchIndex) -> None:
    titles = TitleWords.of(index)
    rows = np.array([TOY_STORY, TOY_SOLDIERS, SCREAM])
    coverage, exact = titles.coverage(("toy", "story"), rows)
    assert coverage.tolist() == [1.0, 0.5, 0.0]
    assert exact.tolist() == [1.0, 0.0, 0.0]  # "Toy Story (1995)" is exactly "toy story"
    assert titles.coverage((), rows)[0].tolist() == [0.0, 0.0, 0.0]


def test_features_of_a_title_query_without_a_user(index: SearchIndex) -> None:
    query = QueryParser(index).parse("toy story")
    rows = np.array([TOY_STORY, TOY_SOLDIERS, SCREAM])
    lists = {"bm25": Ranked(np.array([TOY_STORY, TOY_SOLDIERS]), np.array([4.0, 1.0], np.float32)),
             "vector": Ranked(np.array([SCREAM, TOY_STORY]), np.array([0.9, 0.5], np.float32))}
    vectors = np.eye(index.size + 1, 4, dtype=np.float32)
    features = candidate_features(rows, lists, query, TitleWords.of(index), vectors, None,
                                  index.catalog.popularity)
    assert features.shape == (3, len(SEARCH_FEATURES)) and features.dtype == np.float32
    assert column(features, "bm25_reciprocal_rank") == [1.0, 0.5, 0.0]
    assert column(features, "bm25_relative_score") == [1.0, 0.25, 0.0]  # by the query's best
    assert column(features, "vector_reciprocal_rank") == [0.5, 0.0, 1.0]
    assert column(features, "vector_score") == [0.5, 0.0, 0.9]
    assert column(features, "personal_score") == [0.0, 0.0, 0.0]  # no user
    assert column(features, "personalised") == [0.0, 0.0, 0.0]
    assert column(features, "fused_reciprocal_rank") == [1.0, 0.5, 0.3333]
    assert column(features, "exact_title") == [1.0, 0.0, 0.0]
    assert column(features, "names_category") == [0.0, 0.0, 0.0]
    for name in FOR_CATEGORY:  # a title query: the category terms are all 0
        assert column(features, f"{name}_if_category") == [0.0, 0.0, 0.0]


def test_features_of_a_category_query_for_a_user(index: SearchIndex) -> None:
    query = QueryParser(index).parse("horror")
    assert query.categories
    rows = np.array([SCREAM, ROCKY_HORROR])
    vectors = np.zeros((index.size + 1, 2), dtype=np.float32)
    vectors[SCREAM], vectors[ROCKY_HORROR] = (1.0, 0.0), (0.0, 1.0)
    user = np.array([0.25, 0.75], dtype=np.float32)
    personal = Ranked(np.array([ROCKY_HORROR, SCREAM]), np.array([0.75, 0.25], np.float32))
    features = candidate_features(rows, {"personal": personal}, query, TitleWords.of(index),
                                  vectors, user, index.catalog.popularity)
    assert column(features, "personal_score") == [0.25, 0.75]  # every candidate, from the user
    assert column(features, "personal_reciprocal_rank") == [0.5, 1.0]
    assert column(features, "personalised") == [1.0, 1.0]
    assert column(features, "names_category") == [1.0, 1.0]
    assert column(features, "personal_score_if_category") == [0.25, 0.75]
    assert column(features, "log_popularity") == [round(float(np.log1p(p)), 4) for p in
                                                  index.catalog.popularity[rows]]
