"""A new user's list as events arrive: the test users seen as new users (their attributes
unknown, every event hidden but their n most recent), scored on their held-out event for n in
HISTORY_SIZES, through the served path and against popularity and item-to-item.

The served path (recsys/pipeline/recommend.py) answers a user without history with the popular
items, and anyone else with retrieval and the ranker: "pipeline" here. "retrieval" at n = 0 is
what the two-tower alone would show a new user: the reason for the first rule.
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from recsys.models.bundles import EmbeddingBundle
from training.baselines import popularity_scorer
from training.config import EvalConfig
from training.evaluate import CatalogueScorer, EvalSet, ranking_metrics, scorer_ranks
from training.sequences import UserSequences
from training.steps import EvalUsers, PreparedData, Rankers

HISTORY_SIZES = (0, 1, 3, 5, 10)
NEW_USER = "new:"  # a prefix no dataset user has: their attributes are unknown, as a new user's


def as_new_users(eval_set: EvalSet, n: int) -> EvalSet:
    """`eval_set` with each user's n most recent items visible (and excluded from ranking, as a
    service excludes what it saw), the rest hidden, the users renamed as new ones."""
    users = [NEW_USER + user for user in eval_set.user_ids]
    sequences = [s[len(s) - n:] if n else s[:0] for s in eval_set.histories.sequences]
    times = [t[len(t) - n:] if n else t[:0] for t in eval_set.histories.timestamps]
    return EvalSet(users, eval_set.targets, [np.unique(s) for s in sequences],
                   UserSequences(users, sequences, times), eval_set.timestamps)


def item_to_item(item_vectors: np.ndarray, eval_set: EvalSet) -> CatalogueScorer:
    """Each item's mean similarity (item vectors) to the user's visible items."""
    def score(positions: np.ndarray) -> np.ndarray:
        seeds = [eval_set.histories.sequences[p] for p in positions]
        means = np.stack([item_vectors[s].mean(axis=0) for s in seeds])
        return means @ item_vectors.T
    return score


def cold_start_curve(data: PreparedData, embedding: EmbeddingBundle, rankers: Rankers,
                     config: EvalConfig, sizes: Sequence[int] = HISTORY_SIZES) -> pd.DataFrame:
    """One row per (visible history size, model): hr@10, ndcg@10 on the test users."""
    size = min(config.candidates, data.catalog.size)
    rows = []
    for n in sizes:
        new = as_new_users(data.test, n)
        users = EvalUsers(data, embedding, new)
        ranks = {"popularity": scorer_ranks(popularity_scorer(data.catalog.popularity), new),
                 "retrieval": scorer_ranks(users.retrieval, new)}
        ranks["pipeline"] = ranks["popularity"] if n == 0 else scorer_ranks(
            users.reranked(rankers.ranker, size), new)
        if n:
            ranks["item_to_item"] = scorer_ranks(item_to_item(embedding.item_vectors, new), new)
        for model, r in ranks.items():
            metrics = ranking_metrics(r, (10,))
            rows.append({"history": n, "model": model, "hr@10": metrics["hr@10"],
                         "ndcg@10": metrics["ndcg@10"]})
    return pd.DataFrame(rows)


def plot_cold_start(curve: pd.DataFrame, metric: str = "hr@10") -> Figure:
    """The metric against the number of visible events, one line per model."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for model, part in curve.groupby("model", sort=False):
        ax.plot(part["history"], part[metric], marker="o", label=str(model))
    ax.set(xlabel="events the user has (the most recent kept, the rest hidden)",
           ylabel=metric.upper(), title=f"A new user's {metric.upper()} as events arrive",
           xticks=sorted(curve["history"].unique()))
    ax.legend()
    fig.tight_layout()
    return fig
