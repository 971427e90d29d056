"""Training the learned search ranking (recsys/search/learned.py) and choosing it on validation.

Training queries come from the training events only: each user's last training event is the
item looked for, by the words of its title (clean and with a typo, as anyone and as the user)
and by one of its genres (as the user), with the user's earlier events as their taste. Each
query's first RERANKED fused candidates, as the service fuses them, are the examples; the item
looked for is the positive. A query whose item fusion does not put there teaches nothing and
is left out. The model is a scaler and a logistic regression (scikit-learn), one ONNX graph.

It is served only if it beats fusion alone on the validation queries (each user's
second-to-last event), by the objective of training/search_eval.py: the mean of known-item
HR@10 without a user, with the user, and personalised category HR@10.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from recsys.features import encode_history
from recsys.models import artifacts
from recsys.models.bundles import EmbeddingBundle
from recsys.search.engine import SearchEngine, build_search_engine
from recsys.search.learned import (
    RERANKED,
    SEARCH_FEATURES,
    SEARCH_RANKER,
    TitleWords,
    candidate_features,
)
from recsys.settings import ServingSettings
from training import export
from training.search_eval import CUTOFF, retrieve, served_choice, user_vectors, with_personal
from training.search_queries import category_queries, known_item_queries
from training.steps import PreparedData

log = logging.getLogger(__name__)
PARITY_ROWS = 64


@dataclass(frozen=True)
class Queries:
    """The users whose item is looked for: catalogue row, taste vector, items already known."""

    targets: np.ndarray  # [U]
    vectors: np.ndarray  # [U, D]
    known: list[np.ndarray]


@dataclass(frozen=True)
class Asked:
    text: str
    target: int
    user: np.ndarray | None
    known: np.ndarray | None  # left out of the ranking (category queries, as evaluated)
    kind: str  # "known_item", "known_item_user", "category"


def last_training_events(data: PreparedData, embedding: EmbeddingBundle) -> Queries:
    """Each user with two or more training events: the last one looked for, the rest as taste."""
    users = [u for u, seq in enumerate(data.train.sequences) if len(seq) >= 2]
    targets = np.asarray([data.train.sequences[u][-1] for u in users], dtype=np.int64)
    histories = np.stack([encode_history(data.train.sequences[u][:-1].tolist(),
                                         embedding.history_len) for u in users])
    vectors = embedding.encode_users(histories, data.train_attributes[users])
    known = [np.unique(data.train.sequences[u][:-1]) for u in users]
    return Queries(targets, vectors, known)


def held_out(data: PreparedData, embedding: EmbeddingBundle, split: str) -> Queries:
    """The validation or test split's users (their held-out event looked for)."""
    events = data.validation if split == "validation" else data.test
    return Queries(events.targets, user_vectors(data, events, embedding), list(events.known))


def asked(embedding: EmbeddingBundle, queries: Queries, seed: int) -> Iterator[Asked]:
    for q in known_item_queries(embedding.catalog, queries.targets, seed):
        yield Asked(q.clean, q.target, None, None, "known_item")
        yield Asked(q.typo, q.target, queries.vectors[q.user], None, "known_item_user")
    for c in category_queries(embedding.catalog, queries.targets, seed):
        yield Asked(c.text, c.target, queries.vectors[c.user], queries.known[c.user], "category")


@dataclass(frozen=True)
class Searcher:
    """What every query of training and validation runs through, built once: the search engine
    as served (fusion alone) over the bundle, and the title words the features read."""

    embedding: EmbeddingBundle
    engine: SearchEngine
    titles: TitleWords

    @classmethod
    def of(cls, embedding: EmbeddingBundle) -> Searcher:
        engine = build_search_engine(
            embedding, typo_similarity=served_choice().typo_similarity,
            candidates=ServingSettings.model_fields["search_candidates"].default, learned=False)
        return cls(embedding, engine, TitleWords.of(engine.index))


def candidates(searcher: Searcher, query: Asked) -> tuple[np.ndarray, np.ndarray]:
    """(the first RERANKED fused rows, their features), as the service computes them."""
    embedding, engine = searcher.embedding, searcher.engine
    lists = retrieve(engine, query.text)
    if query.user is not None:
        lists = with_personal(lists, embedding, query.user)
    rows = served_choice().rule.fuse({n: r.rows for n, r in lists.items()},
                                     embedding.catalog.popularity).rows
    if query.known is not None and query.known.size:
        rows = rows[~np.isin(rows, query.known)]
    head = rows[:RERANKED]
    parsed = engine.parser.parse(query.text)
    return head, candidate_features(head, lists, parsed, searcher.titles, embedding.item_vectors,
                                    query.user, embedding.catalog.popularity)


def fit(data: PreparedData, searcher: Searcher, seed: int = 0) -> tuple[Pipeline | None, int]:
    """The model, and how many training queries had their item among the candidates (None and
    0 when none had: nothing to learn from)."""
    features, labels = [], []
    queries = last_training_events(data, searcher.embedding)
    for query in asked(searcher.embedding, queries, seed):
        head, x = candidates(searcher, query)
        if np.any(head == query.target):
            features.append(x)
            labels.append(head == query.target)
    if not features:
        return None, 0
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    model.fit(np.concatenate(features), np.concatenate(labels))
    return model, len(features)


def hit_rates(model: Pipeline | None, searcher: Searcher, queries: Queries,
              seeds: tuple[int, ...] = (0,)) -> dict[str, float]:
    """HR@10 per query kind of fusion alone (model None) or the learned order, and the mean of
    the three (the choice's objective)."""
    hits: dict[str, list[bool]] = {}
    for seed in seeds:
        for query in asked(searcher.embedding, queries, seed):
            head, x = candidates(searcher, query)
            order = head if model is None or head.size == 0 else \
                head[np.argsort(-model.predict_proba(x)[:, 1], kind="stable")]
            hits.setdefault(query.kind, []).append(bool(np.any(order[:CUTOFF] == query.target)))
    rates = {kind: float(np.mean(h)) for kind, h in hits.items()}
    return {**rates, "objective": float(np.mean(list(rates.values())))}


def train_search_ranker(data: PreparedData, embedding: EmbeddingBundle,
                        directory: Path) -> dict[str, Any]:
    """Fit, export to `directory`/search_ranker.onnx with a parity check, and decide on
    validation; returns the manifest metadata (`search_ranking`)."""
    searcher = Searcher.of(embedding)
    model, queries = fit(data, searcher)
    if model is None:
        return {"use": "fusion", "reason": "no training query found its item among the fused "
                "candidates", "training_queries": 0}
    held = held_out(data, embedding, "validation")
    validation = {"fusion": hit_rates(None, searcher, held),
                  "learned": hit_rates(model, searcher, held)}
    use = validation["learned"]["objective"] > validation["fusion"]["objective"]
    path = directory / SEARCH_RANKER
    onx = to_onnx(model, initial_types=[("features", FloatTensorType([None,
                                                                      len(SEARCH_FEATURES)]))],
                  options={id(model.steps[-1][1]): {"zipmap": False}}, target_opset=17)
    path.write_bytes(onx.SerializeToString())
    sample = np.concatenate([candidates(searcher, q)[1] for _, q in
                             zip(range(8), asked(embedding, held, 1))]).astype(np.float32)
    expected = model.predict_proba(sample)[:, 1].astype(np.float32)
    diff = export.check_parity(expected, export.onnx_outputs(
        path, {"features": sample}, "probabilities")[:, 1], "search ranker")
    artifacts.add_parity(directory, {SEARCH_RANKER: {
        "features": sample[:PARITY_ROWS], "expected": expected[:PARITY_ROWS]}})
    log.info("search ranking: %s (validation objective learned %.4f, fusion %.4f)",
             "learned" if use else "fusion", validation["learned"]["objective"],
             validation["fusion"]["objective"])
    return {"use": "learned" if use else "fusion", "features": list(SEARCH_FEATURES),
            "reranked": RERANKED, "training_queries": queries, "validation": validation,
            "onnx_parity_max_abs_diff": diff}
