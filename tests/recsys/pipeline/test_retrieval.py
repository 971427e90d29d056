"""Candidate sources on a real bundle (ONNX towers, FAISS index) and the Retriever that merges them."""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, replace

import numpy as np
import pytest

from recsys.errors import RetrievalError
from recsys.features import PAD
from recsys.models.bundles import EmbeddingBundle
from recsys.models.index import ItemIndex
from recsys.models.neighbours import ItemNeighbours
from recsys.pipeline.retrieval import (
    AnnSource,
    Candidates,
    ItemToItemSource,
    PopularSource,
    RetrievalQuery,
    Retriever,
)
from tests.support.bundle_factory import make_embedding_bundle
from tests.support.events import Events
from training.index_build import IndexSpec, build_index, item_neighbours

N_ITEMS = 200


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> EmbeddingBundle:
    directory = tmp_path_factory.mktemp("retrieval") / "embedding"
    make_embedding_bundle(directory, n_items=N_ITEMS, seed=4)
    return EmbeddingBundle.load(directory)


@pytest.fixture(scope="module")
def query(bundle: EmbeddingBundle) -> RetrievalQuery:
    history = np.asarray([[0, 11, 42, 7, 99]], dtype=np.int64)
    user = bundle.encode_users(history, np.asarray([[1, 2]], dtype=np.int64))[0]
    return RetrievalQuery(user, history[0][history[0] != PAD])


@dataclass
class Broken:
    name: str
    inline: bool = False

    def __call__(self, query: RetrievalQuery) -> np.ndarray:
        raise RetrievalError(f"{self.name} is down")


class Stuck:
    """A blocking source (not inline) that holds its worker thread until released."""

    name = "stuck"
    inline = False

    def __init__(self) -> None:
        self.release = threading.Event()

    def __call__(self, query: RetrievalQuery) -> np.ndarray:
        self.release.wait(10.0)
        return np.asarray([1, 2, 3], dtype=np.int64)


def exact_top(bundle: EmbeddingBundle, vector: np.ndarray, k: int) -> np.ndarray:
    scores = bundle.item_vectors[1:] @ vector
    return np.argsort(-scores, kind="stable")[:k] + 1


# ---- sources ------------------------------------------------------------------------------

def test_ann_returns_the_nearest_items_best_first(bundle: EmbeddingBundle,
                                                  query: RetrievalQuery) -> None:
    found = AnnSource(bundle.index, 25)(query)
    assert found.dtype == np.int64 and len(found) == 25
    assert set(found.tolist()) == set(exact_top(bundle, query.user_vector, 25).tolist())
    scores = bundle.item_vectors[found] @ query.user_vector
    assert (np.diff(scores) <= 1e-6).all()


def test_ann_asks_for_no_more_than_the_query_needs(bundle: EmbeddingBundle,
                                                  query: RetrievalQuery) -> None:
    source = AnnSource(bundle.index, 30)
    everything = source(query)
    assert len(everything) == 30
    for needed, expected in ((7, 7), (30, 30), (500, 30), (None, 30)):
        np.testing.assert_array_equal(source(replace(query, needed=needed)), everything[:expected])
    ivf = ItemIndex(build_index(bundle.item_vectors, IndexSpec("ivf", nlist=4, nprobe=2)),
                    bundle.item_vectors)
    probed = AnnSource(ivf, 30)(query)
    np.testing.assert_array_equal(AnnSource(ivf, 30)(replace(query, needed=7)), probed[:7])


def test_an_hnsw_index_is_always_asked_for_all_k(bundle: EmbeddingBundle,
                                                 query: RetrievalQuery) -> None:
    """HNSW searches max(efSearch, k) nodes: a smaller k is not the start of the same list."""
    hnsw = ItemIndex(build_index(bundle.item_vectors, IndexSpec("hnsw", ef_search=8)),
                     bundle.item_vectors)
    source = AnnSource(hnsw, 30)
    assert len(source(replace(query, needed=7))) == 30


def test_ann_never_returns_padding_or_missing_ids(bundle: EmbeddingBundle,
                                                  query: RetrievalQuery) -> None:
    # IVF probing one of 4 lists reaches fewer than k items: FAISS pads the row with -1.
    ivf = ItemIndex(build_index(bundle.item_vectors, IndexSpec("ivf", nlist=4, nprobe=1)),
                    bundle.item_vectors)
    _, raw = ivf.search(query.user_vector[None, :], N_ITEMS)
    assert (raw[0] < 0).any()  # the situation this test is about
    found = AnnSource(ivf, N_ITEMS)(query)
    assert len(found) > 0 and (found > PAD).all()
    np.testing.assert_array_equal(found, raw[0][raw[0] >= 0])


def test_ann_with_k_above_catalogue_size_returns_each_item_once(bundle: EmbeddingBundle,
                                                                query: RetrievalQuery) -> None:
    found = AnnSource(bundle.index, 10 * N_ITEMS)(query)
    assert sorted(found.tolist()) == list(range(1, N_ITEMS + 1))


def test_popular_returns_most_popular_without_padding(bundle: EmbeddingBundle,
                                                      query: RetrievalQuery) -> None:
    popularity = bundle.catalog.popularity.copy()
    popularity[PAD] = popularity.max() + 100  # even a popular padding row is never served
    catalog = replace(bundle.catalog, popularity=popularity)
    found = PopularSource(catalog.popular_rows, 10)(query)
    assert PAD not in found and len(found) == 10
    expected = np.argsort(-bundle.catalog.popularity[1:], kind="stable")[:10] + 1
    np.testing.assert_array_equal(found, expected)
    assert PopularSource(catalog.popular_rows, 0)(query).size == 0


def test_item_to_item_returns_neighbours_of_recent_items_but_never_the_seeds(
        bundle: EmbeddingBundle) -> None:
    anchor = 42
    neighbour = int(exact_top(bundle, bundle.item_vectors[anchor], 2)[1])
    recent = np.asarray([5, neighbour, anchor], dtype=np.int64)  # anchor most recent
    source = ItemToItemSource(ItemNeighbours(bundle.index), seeds=2, per_seed=10)
    found = source(RetrievalQuery(bundle.item_vectors[anchor], recent))
    assert len(found) > 0 and (found > PAD).all()
    assert anchor not in found and neighbour not in found  # both are seeds
    # Lists are interleaved rank by rank, so each seed's nearest other item leads the result.
    def top_other(seed: int) -> int:
        ranked = exact_top(bundle, bundle.item_vectors[seed], 4).tolist()
        return next(i for i in ranked if i not in (anchor, neighbour))
    assert set(found[:2].tolist()) == {top_other(anchor), top_other(neighbour)}
    # Item 5 is older than the seed window: its neighbours are not searched.
    own = exact_top(bundle, bundle.item_vectors[5], 11)[1:]
    searched = np.concatenate([exact_top(bundle, bundle.item_vectors[s], 11) for s in recent[1:]])
    assert not np.isin(np.setdiff1d(own, searched), found).any()


def test_item_to_item_without_recent_items_or_seeds_returns_nothing(
        bundle: EmbeddingBundle, query: RetrievalQuery) -> None:
    empty = RetrievalQuery(query.user_vector, np.zeros(0, dtype=np.int64))
    assert ItemToItemSource(ItemNeighbours(bundle.index), 5, 10)(empty).size == 0
    assert ItemToItemSource(ItemNeighbours(bundle.index), 0, 10)(query).size == 0


class NoSearch:
    """An index that must not be searched."""

    def search(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("the neighbour table should have answered")

    neighbours = search


def test_item_to_item_reads_the_neighbour_table_and_answers_as_the_search_does(
        bundle: EmbeddingBundle) -> None:
    """Training's table (training.index_build.item_neighbours) gives the source the lists its
    search gave, without searching: here the index cannot be searched at all."""
    table = item_neighbours(bundle.index, 10)
    assert table.dtype == np.int32 and table.shape == (N_ITEMS + 1, 10)
    assert (table[PAD] == PAD).all()
    for row in (1, 42, N_ITEMS):  # each row: the exact nearest other items, best first
        np.testing.assert_array_equal(table[row], [i for i in exact_top(
            bundle, bundle.item_vectors[row], 11) if i != row][:10])
    recent = np.asarray([5, 17, 42, 99], dtype=np.int64)
    query = RetrievalQuery(bundle.item_vectors[42], recent)
    searched = ItemToItemSource(ItemNeighbours(bundle.index), seeds=3, per_seed=10)(query)
    read = ItemToItemSource(ItemNeighbours(NoSearch(), table=table),  # type: ignore[arg-type]
                            seeds=3, per_seed=10)(query)
    np.testing.assert_array_equal(read, searched)
    # fewer neighbours than the table holds: the first ones of each row
    fewer = ItemToItemSource(ItemNeighbours(NoSearch(), table=table),  # type: ignore[arg-type]
                             seeds=3, per_seed=4)(query)
    np.testing.assert_array_equal(
        fewer, ItemToItemSource(ItemNeighbours(bundle.index), 3, 4)(query))


def test_item_to_item_searches_when_the_table_is_narrower_than_asked(
        bundle: EmbeddingBundle) -> None:
    table = item_neighbours(bundle.index, 4)
    source = ItemToItemSource(ItemNeighbours(NoSearch(), table=table),  # type: ignore[arg-type]
                              seeds=2, per_seed=10)
    assert not source.neighbours.reads_table(10) and source.neighbours.reads_table(4)
    with pytest.raises(AssertionError, match="neighbour table"):
        source(RetrievalQuery(bundle.item_vectors[1], np.asarray([3, 4], dtype=np.int64)))


def test_item_neighbours_of_a_catalogue_smaller_than_k_fill_with_padding() -> None:
    vectors = np.zeros((4, 2), dtype=np.float32)
    vectors[1:] = [[1, 0], [0.9, 0.1], [0, 1]]
    table = item_neighbours(ItemIndex(build_index(vectors), vectors), 5)
    np.testing.assert_array_equal(table, [[0] * 5, [2, 3, 0, 0, 0], [1, 3, 0, 0, 0],
                                          [2, 1, 0, 0, 0]])
    with pytest.raises(ValueError, match="k must be positive"):
        item_neighbours(ItemIndex(build_index(vectors), vectors), 0)


def test_an_item_that_is_not_its_own_nearest_still_gets_exactly_k_others() -> None:
    """Inner product over unnormalised vectors: a short vector scores its own item below
    longer ones, so the search's k+1 results may not hold it; the k+1-th is dropped then."""
    vectors = np.zeros((5, 2), dtype=np.float32)
    vectors[1:] = [[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.05]]
    index = ItemIndex(build_index(vectors), vectors)
    np.testing.assert_array_equal(index.neighbours(np.asarray([4, 2]), 1), [[1], [1]])
    np.testing.assert_array_equal(index.neighbours(np.asarray([4]), 2), [[1, 2]])


# ---- Retriever ----------------------------------------------------------------------------

def sources(bundle: EmbeddingBundle) -> list:
    return [AnnSource(bundle.index, 30), PopularSource(bundle.catalog.popular_rows, 20),
            ItemToItemSource(ItemNeighbours(bundle.index), 3, 10)]


def retrieve(retriever: Retriever, query: RetrievalQuery) -> Candidates:
    return asyncio.run(retriever.retrieve(query))


def test_retriever_merges_dedups_and_orders_by_similarity(bundle: EmbeddingBundle,
                                                          query: RetrievalQuery) -> None:
    parts = {s.name: s(query) for s in sources(bundle)}
    candidates = retrieve(Retriever(sources(bundle), bundle.item_vectors, 5.0), query)
    assert candidates.source_names == ("ann", "popular", "item2item")
    assert candidates.failed == ()
    union = set(np.concatenate(list(parts.values())).tolist())
    assert len(candidates.items) == len(set(candidates.items.tolist())) == len(union)
    assert set(candidates.items.tolist()) == union
    assert sum(len(p) for p in parts.values()) > len(union)  # the sources overlapped
    expected = bundle.item_vectors[candidates.items] @ query.user_vector
    np.testing.assert_allclose(candidates.similarity, expected, rtol=1e-5, atol=1e-6)
    assert (np.diff(candidates.similarity) <= 0).all()
    assert candidates.source_mask.shape == (len(union), 3)
    for position, item in enumerate(candidates.items.tolist()):
        proposed_by = [name for name, ids in parts.items() if item in ids]
        assert candidates.sources_of(position) == proposed_by
        assert candidates.source_mask[position].tolist() == [n in proposed_by for n in parts]


def test_only_the_named_sources_run_and_an_unknown_name_runs_them_all(
        bundle: EmbeddingBundle, query: RetrievalQuery) -> None:
    events = Events()
    ann, popular, _ = sources(bundle)
    retriever = Retriever([ann, Broken("broken"), popular], bundle.item_vectors, 5.0, events)
    nearest = asyncio.run(retriever.retrieve(query, only=("ann",)))
    assert nearest.source_names == ("ann",) and nearest.failed == ()
    assert set(nearest.items.tolist()) == set(ann(query).tolist())
    assert events.seen == []  # the broken source was not run
    everything = asyncio.run(retriever.retrieve(query, only=("no-such-source",)))
    assert everything.source_names == ("ann", "popular") and everything.failed == ("broken",)


def test_select_keeps_sources_aligned(bundle: EmbeddingBundle, query: RetrievalQuery) -> None:
    candidates = retrieve(Retriever(sources(bundle), bundle.item_vectors, 5.0), query)
    picked = candidates.select(np.asarray([4, 0, 2]))
    np.testing.assert_array_equal(picked.items, candidates.items[[4, 0, 2]])
    assert picked.sources_of(0) == candidates.sources_of(4)
    assert picked.sources_of(2) == candidates.sources_of(2)


def test_a_failing_source_is_named_and_the_others_still_used(bundle: EmbeddingBundle,
                                                              query: RetrievalQuery) -> None:
    events = Events()
    ann, popular, _ = sources(bundle)
    retriever = Retriever([ann, Broken("broken"), popular], bundle.item_vectors, 5.0, events)
    candidates = retrieve(retriever, query)
    assert candidates.failed == ("broken",)
    assert candidates.source_names == ("ann", "popular")
    expected = set(ann(query).tolist()) | set(popular(query).tolist())
    assert set(candidates.items.tolist()) == expected
    assert events.seen == [("source_failed", {"source": "broken", "error": "RetrievalError"})]


def test_a_source_past_its_timeout_is_failed_without_waiting_for_it(
        bundle: EmbeddingBundle, query: RetrievalQuery) -> None:
    events = Events()
    stuck = Stuck()
    ann = AnnSource(bundle.index, 30)
    retriever = Retriever([ann, stuck], bundle.item_vectors, 0.1, events)

    async def scenario() -> tuple[Candidates, float]:
        started = time.perf_counter()
        try:
            return await retriever.retrieve(query), time.perf_counter() - started
        finally:
            stuck.release.set()  # let the worker thread end before the loop shuts down

    candidates, elapsed = asyncio.run(scenario())
    assert elapsed < 3.0  # the stuck source would hold the request for 10 s
    assert candidates.failed == ("stuck",)
    assert set(candidates.items.tolist()) == set(ann(query).tolist())
    assert events.seen == [("source_failed", {"source": "stuck", "error": "timeout"})]


class WhereRun:
    """Records the thread it ran on."""

    def __init__(self, name: str, inline: bool) -> None:
        self.name, self.inline = name, inline
        self.thread: str | None = None

    def __call__(self, query: RetrievalQuery) -> np.ndarray:
        self.thread = threading.current_thread().name
        return np.asarray([1, 2], dtype=np.int64)


def test_inline_sources_run_on_the_loop_and_blocking_ones_in_worker_threads(
        bundle: EmbeddingBundle, query: RetrievalQuery) -> None:
    on_loop, in_thread = WhereRun("local", inline=True), WhereRun("remote", inline=False)
    retrieve(Retriever([on_loop, in_thread], bundle.item_vectors, 5.0), query)
    assert on_loop.thread == threading.main_thread().name
    assert in_thread.thread is not None and in_thread.thread.startswith("retrieval")
    # The shipped local sources are inline: no thread hop for an in-memory search.
    assert AnnSource.inline and PopularSource.inline and ItemToItemSource.inline
    assert Retriever([on_loop], bundle.item_vectors, 5.0).executor is None


def test_an_inline_source_that_raises_is_failed_like_a_threaded_one(
        bundle: EmbeddingBundle, query: RetrievalQuery) -> None:
    events = Events()
    ann = AnnSource(bundle.index, 30)
    retriever = Retriever([Broken("local", inline=True), ann], bundle.item_vectors, 5.0, events)
    candidates = retrieve(retriever, query)
    assert candidates.failed == ("local",)
    assert set(candidates.items.tolist()) == set(ann(query).tolist())
    assert events.seen == [("source_failed", {"source": "local", "error": "RetrievalError"})]


def test_every_source_failing_raises_retrieval_error(bundle: EmbeddingBundle,
                                                     query: RetrievalQuery) -> None:
    events = Events()
    retriever = Retriever([Broken("ann"), Broken("popular")], bundle.item_vectors, 5.0, events)
    with pytest.raises(RetrievalError, match="every candidate source failed: ann, popular"):
        retrieve(retriever, query)
    assert [labels["source"] for _, labels in events.seen] == ["ann", "popular"]


def test_sources_returning_nothing_give_empty_candidates(bundle: EmbeddingBundle,
                                                         query: RetrievalQuery) -> None:
    retriever = Retriever([PopularSource(bundle.catalog.popular_rows, 0)], bundle.item_vectors, 5.0)
    candidates = retrieve(retriever, query)
    assert candidates.items.size == 0 and candidates.source_mask.shape == (0, 1)
