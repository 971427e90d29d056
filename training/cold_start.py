"""A new user's list as events arrive: the test users seen as new users (their attributes
unknown, every event hidden but their n most recent), scored on their held-out event for n in
HISTORY_SIZES, through the served path and against popularity and item-to-item.

"pipeline" is the served path (recsys/pipeline/recommend.py), which follows the model set's
ranking policy (recsys/models/policy.py): the popular items for a user without history,
item-to-item for histories as short as validation found it better, then retrieval order for
histories too short for the ranker to beat it, then the ranker. "retrieval" at n = 0 is what the two-tower alone would show a new user: the reason
for the first rule.
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from recsys.models.bundles import EmbeddingBundle
from training.baselines import popularity_scorer
from training.config import EvalConfig
from training.evaluate import as_new_users, item_to_item, ranking_metrics, scorer_ranks
from training.steps import EvalUsers, PreparedData, Rankers

HISTORY_SIZES = (0, 1, 3, 5, 10)
def cold_start_curve(data: PreparedData, embedding: EmbeddingBundle, rankers: Rankers,
                     config: EvalConfig, sizes: Sequence[int] = HISTORY_SIZES) -> pd.DataFrame:
    """One row per (visible history size, model): hr@10, ndcg@10 on the test users."""
    size = min(config.candidates, data.catalog.size)
    rows = []
    for n in sizes:
        new = as_new_users(data.test, n)
        users = EvalUsers(data, embedding, new)
        popular = popularity_scorer(data.catalog.served_popularity)
        ranks = {"popularity": scorer_ranks(popular, new),
                 "retrieval": scorer_ranks(users.retrieval, new)}
        ranks["pipeline"] = users.served(rankers.ranker, rankers.ranker.policy, size)
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
