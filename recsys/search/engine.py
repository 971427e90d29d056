"""Search over one model slot's catalogue, built when the slot loads: a promotion brings its
own index."""
from __future__ import annotations

from dataclasses import dataclass

from recsys.models import artifacts
from recsys.models.bundles import EmbeddingBundle
from recsys.models.onnx_runtime import create_session
from recsys.search.index import BoolArray, SearchIndex, build_search_index, row_mask
from recsys.search.learned import SEARCH_RANKER, SearchRanker, SearchRanking
from recsys.search.query import ParsedQuery, QueryParser
from recsys.search.retrievers import QueryEncoder, QueryRetriever, TextRetriever, VectorRetriever


@dataclass(frozen=True)
class SearchEngine:
    index: SearchIndex
    parser: QueryParser
    text: QueryRetriever  # BM25: the answer of last resort
    vectors: QueryRetriever  # the item space, under its own timeout
    ranker: SearchRanking | None = None  # the learned order of the fused candidates (None: fused)

    @property
    def ranking(self) -> str:
        return "fusion" if self.ranker is None else "learned"

    def allowed(self, query: ParsedQuery, categories: tuple[int, ...] = (),
                years: tuple[int, int] | None = None) -> BoolArray | None:
        """[n+1] the rows the query's filters and the request's (`categories`: genre columns,
        one of which an item must have; `years`: inclusive) let through; None: no filter."""
        span = query.years
        if years is not None:
            span = years if span is None else (max(span[0], years[0]), min(span[1], years[1]))
        if not (query.categories or categories or span):
            return None
        return row_mask(self.index, query.categories, categories, span)


def build_search_engine(embedding: EmbeddingBundle, *, typo_similarity: float, candidates: int,
                        threads: int = 1, learned: bool = True) -> SearchEngine:
    """The engine over `embedding`'s catalogue, item tower and FAISS index; `candidates`: rows
    each retriever proposes; `learned`: order the fused candidates with the bundle's search
    ranker where training chose it. One query is run to load the item tower's lazy state."""
    index = build_search_index(embedding.catalog, typo_similarity)
    session = create_session(embedding.path / artifacts.ITEM_TOWER, intra_op_threads=threads,
                             prefer_gpu=False)  # one query a call: the CPU answers sooner
    encoder = QueryEncoder(session, len(embedding.catalog.genre_vocab),
                           int(embedding.config["title_buckets"]),
                           int(embedding.config["title_tokens"]))
    engine = SearchEngine(index, QueryParser(index), TextRetriever(index, candidates),
                          VectorRetriever(encoder, embedding.index, candidates),
                          load_search_ranker(embedding, index, threads) if learned else None)
    warm_up = engine.parser.parse(str(embedding.catalog.titles[-1]))
    engine.vectors.retrieve(warm_up, None)
    return engine


def chosen_search_ranking(embedding: EmbeddingBundle) -> str:
    """"learned" when training chose the bundle's search ranker on validation and the bundle
    holds it, else "fusion" (training chose fusion alone, or bundles trained before it)."""
    chosen = embedding.manifest.metadata.get("search_ranking", {})
    learned = chosen.get("use") == "learned" and (embedding.path / SEARCH_RANKER).is_file()
    return "learned" if learned else "fusion"


def load_search_ranker(embedding: EmbeddingBundle, index: SearchIndex,
                       threads: int = 1) -> SearchRanker | None:
    """The bundle's search ranker, parity-checked, when training chose it on validation; None
    when it chose fusion alone or the bundle has none (bundles trained before it existed)."""
    if chosen_search_ranking(embedding) != "learned":
        return None
    ranker = SearchRanker.load(embedding.path, index, threads)
    ranker.check_parity(embedding.path)
    return ranker
