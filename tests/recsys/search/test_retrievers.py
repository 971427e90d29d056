"""The two retrievers and the engine over a real bundle: ONNX item tower, FAISS index."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from recsys.errors import VectorSearchError
from recsys.features import PAD, tokenize_title
from recsys.models.bundles import EmbeddingBundle
from recsys.search.engine import SearchEngine, build_search_engine
from recsys.search.retrievers import QueryEncoder, TextRetriever, VectorRetriever
from tests.support.bundle_factory import GENRES, TITLE_BUCKETS, TITLE_TOKENS, make_embedding_bundle

K = 10


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> EmbeddingBundle:
    directory = tmp_path_factory.mktemp("search") / "embedding"
    make_embedding_bundle(directory, n_items=60)
    return EmbeddingBundle.load(directory)


@pytest.fixture(scope="module")
def engine(bundle: EmbeddingBundle) -> SearchEngine:
    return build_search_engine(bundle, typo_similarity=75.0, candidates=K)


def test_bm25_puts_the_item_named_first_and_only_returns_matches(engine: SearchEngine) -> None:
    found = engine.text.retrieve(engine.parser.parse("movie 7"), None)
    assert found.rows[0] == 7  # titles are "Movie {i} {genre} story"
    assert len(found.rows) == K  # every title has "movie": cut to k
    assert np.all(np.diff(found.scores) <= 0)
    assert engine.text.retrieve(engine.parser.parse("qqqq"), None).rows.size == 0


def test_bm25_honours_the_filter(engine: SearchEngine, bundle: EmbeddingBundle) -> None:
    allowed = np.zeros(bundle.catalog.size + 1, dtype=bool)
    allowed[[3, 5]] = True
    found = engine.text.retrieve(engine.parser.parse("movie"), allowed)
    assert sorted(found.rows.tolist()) == [3, 5]


def test_bm25_ties_go_to_the_more_popular_item(bundle: EmbeddingBundle) -> None:
    engine = build_search_engine(bundle, typo_similarity=75.0, candidates=1000)
    found = engine.text.retrieve(engine.parser.parse("story"), None)
    scores = dict(zip(found.rows.tolist(), found.scores.tolist()))
    tied = [r for r in found.rows.tolist() if scores[r] == found.scores[0]]
    popularity = bundle.catalog.popularity[tied]
    assert np.all(np.diff(popularity) <= 0)


def test_the_query_vector_is_the_item_tower_on_a_pseudo_item(engine: SearchEngine,
                                                             bundle: EmbeddingBundle) -> None:
    assert engine.parser.parse("horror story").categories == ()  # "Movie 4 horror story"
    query = engine.parser.parse("scary horror")  # no title: horror is the category
    assert query.categories == (GENRES.index("horror"),)
    assert isinstance(engine.vectors, VectorRetriever)
    vector = engine.vectors.encoder.encode(query)
    genres = np.zeros((1, len(GENRES)), dtype=np.float32)
    genres[0, GENRES.index("horror")] = 1.0
    expected = engine.vectors.encoder.session.run(["item_vector"], {
        "item": np.asarray([PAD]), "genres": genres,
        "title_tokens": tokenize_title("scary horror", TITLE_BUCKETS, TITLE_TOKENS)[None]})[0]
    np.testing.assert_allclose(vector, expected)


def test_the_vector_retriever_returns_the_nearest_allowed_items(
        engine: SearchEngine, bundle: EmbeddingBundle) -> None:
    assert isinstance(engine.vectors, VectorRetriever)
    query = engine.parser.parse("movie story")
    found = engine.vectors.retrieve(query, None)
    assert len(found.rows) == K and PAD not in found.rows and np.all(np.diff(found.scores) <= 0)
    exact = bundle.item_vectors[1:] @ engine.vectors.encoder.encode(query)[0]
    assert found.rows[0] == int(np.argmax(exact)) + 1
    allowed = np.zeros(bundle.catalog.size + 1, dtype=bool)
    allowed[1::2] = True
    odd = engine.vectors.retrieve(query, allowed)
    assert len(odd.rows) == K and np.all(odd.rows % 2 == 1)


def test_an_item_tower_failure_is_a_vector_search_error(engine: SearchEngine) -> None:
    assert isinstance(engine.vectors, VectorRetriever)
    encoder = replace_buckets(engine.vectors.encoder, TITLE_BUCKETS * 1000)  # ids past its table
    broken = VectorRetriever(encoder, engine.vectors.index, K)
    with pytest.raises(VectorSearchError, match="item tower"):
        broken.retrieve(engine.parser.parse("movie 1 horror story"), None)


def replace_buckets(encoder: QueryEncoder, buckets: int) -> QueryEncoder:
    return QueryEncoder(encoder.session, encoder.genres, buckets, encoder.title_tokens)


def test_the_engine_reads_its_index_from_the_bundle(engine: SearchEngine,
                                                    bundle: EmbeddingBundle) -> None:
    assert engine.index.catalog is bundle.catalog
    assert isinstance(engine.text, TextRetriever) and engine.text.k == K
    assert engine.allowed(engine.parser.parse("movie")) is None
    allowed = engine.allowed(engine.parser.parse("movie"), (0,), None)
    assert allowed is not None and allowed.sum() == (bundle.catalog.genres[:, 0] > 0).sum()


def test_a_filter_of_the_request_meets_the_decade_of_the_query(bundle: EmbeddingBundle) -> None:
    old = bundle.catalog.titles
    titles = np.asarray([""] + [f"{t} ({1950 + i % 50})" for i, t in enumerate(old[1:])])
    engine = build_search_engine(replace(bundle, catalog=replace(bundle.catalog, titles=titles)),
                                 typo_similarity=75.0, candidates=K)
    query = engine.parser.parse("90s")
    assert query.years == (1990, 1999)
    allowed = engine.allowed(query, (), (1995, 2020))
    assert allowed is not None
    assert set(engine.index.years[allowed].tolist()) == {1995, 1996, 1997, 1998, 1999}
