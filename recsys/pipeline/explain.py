"""Why an item is in a list (`explain: true` on /recommend): the path that ordered it, its
similarity to the user, and for a ranked list the ranker's main feature contributions.

A contribution is measured by occlusion: the item's score minus its score with one feature group
set to its training mean (0 after standardisation; 0 for the embedding groups), all groups of all
shown items scored in one extra ranker call. It works for any ranker (the DCN's cross terms have
no additive decomposition) and costs nothing to requests that do not ask.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from recsys.features import DENSE_FEATURES
from recsys.pipeline.ranking import RankerChain
from recsys.pipeline.retrieval import Candidates

FloatArray = npt.NDArray[np.float32]
EMBEDDING_GROUPS = ("user_item_interaction", "item_embedding")  # ranker_inputs' two [D] blocks
SHOWN_CONTRIBUTIONS = 3


def feature_groups(width: int) -> list[tuple[str, slice]]:
    """(name, columns) of each feature group of ranker inputs [N, width] (recsys/features.py
    ranker_inputs: the dense features, then user*item, then the item vector)."""
    dense = len(DENSE_FEATURES)
    dim = (width - dense) // 2
    return [(name, slice(i, i + 1)) for i, name in enumerate(DENSE_FEATURES)] + [
        (EMBEDDING_GROUPS[0], slice(dense, dense + dim)),
        (EMBEDDING_GROUPS[1], slice(dense + dim, dense + 2 * dim))]


def occluded(rows: FloatArray) -> FloatArray:
    """[N * G, F]: each row of `rows` [N, F] once per feature group, that group zeroed."""
    groups = feature_groups(rows.shape[1])
    out = np.repeat(rows, len(groups), axis=0)
    for g, (_, columns) in enumerate(groups):
        out[g::len(groups), columns] = 0.0
    return out


def contributions(scores: FloatArray, occluded_scores: FloatArray, width: int,
                  top: int = SHOWN_CONTRIBUTIONS) -> list[list[dict[str, Any]]]:
    """Per item, its `top` feature groups by absolute effect (score minus occluded score:
    positive pushed the item up), largest first."""
    groups = feature_groups(width)
    effects = scores[:, None] - occluded_scores.reshape(len(scores), len(groups))
    out = []
    for row in effects:
        best = np.argsort(-np.abs(row), kind="stable")[:top]
        out.append([{"feature": groups[g][0], "effect": round(float(row[g]), 6)} for g in best])
    return out


async def add_explanations(result: dict[str, Any], ranked: Candidates, item_rows: dict[str, int],
                           features: FloatArray | None = None,
                           ranker: RankerChain | None = None) -> None:
    """Give each item of `result` its "explanation", in place. `features` and `ranker` (the
    candidates' ranker inputs and the chain that ranked them) add the contributions when a
    ranker ordered the list; they are left empty if another scorer answers the extra call
    (which has the chain's own timeout: a request that asks for explanations may take longer)."""
    position = {int(row): p for p, row in enumerate(ranked.items)}
    shown = [position[item_rows[item["item_id"]]] for item in result["items"]]
    effects: list[list[dict[str, Any]]] = [[] for _ in shown]
    if result["ranker"] in ("ranker", "fallback") and features is not None and ranker and shown:
        rows = features[shown]
        batch = np.concatenate([rows, occluded(rows)])
        outcome = await ranker.rank(batch, np.zeros(len(batch), dtype=np.float32))
        if outcome.ranker == result["ranker"]:
            effects = contributions(outcome.scores[:len(rows)], outcome.scores[len(rows):],
                                    rows.shape[1])
    for item, p, effect in zip(result["items"], shown, effects):
        item["explanation"] = {"path": result["ranker"], "sources": item["sources"],
                               "similarity": round(float(ranked.similarity[p]), 6),
                               "contributions": effect}
