"""Offline evaluation: leave-last-out, full-catalogue ranking with the user's known items excluded."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from recsys.features import PAD
from training.sequences import UserSequences

# scores(user positions [B]) -> [B, n+1] scores over catalogue rows (row 0 is ignored)
CatalogueScorer = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class EvalSet:
    """Per evaluated user: the held-out row, the rows to exclude, and the history to encode."""

    user_ids: list[str]
    targets: np.ndarray  # [U] catalogue row of the held-out event
    known: list[np.ndarray]  # rows the user already interacted with (excluded from ranking)
    histories: UserSequences  # what the models may use as the user's history, time-ordered
    timestamps: np.ndarray  # [U] time of the held-out event (for context features)


def make_eval_set(history: UserSequences, held_out: UserSequences) -> EvalSet:
    """Users with exactly one held-out event whose item is in the catalogue and who have history."""
    pos = history.position()
    users, targets, known, seqs, times, when = [], [], [], [], [], []
    for user, seq, ts in zip(held_out.user_ids, held_out.sequences, held_out.timestamps):
        j = pos.get(user)
        if len(seq) == 0 or j is None or len(history.sequences[j]) == 0:
            continue
        users.append(user)
        targets.append(int(seq[-1]))
        known.append(np.unique(history.sequences[j]))
        seqs.append(history.sequences[j])
        times.append(history.timestamps[j])
        when.append(int(ts[-1]))
    return EvalSet(users, np.asarray(targets, dtype=np.int64), known,
                   UserSequences(users, seqs, times), np.asarray(when, dtype=np.int64))


def mask_known(scores: np.ndarray, known: Sequence[np.ndarray]) -> np.ndarray:
    scores = np.array(scores, dtype=np.result_type(scores.dtype, np.float32), copy=True)
    scores[:, PAD] = -np.inf
    for i, rows in enumerate(known):
        scores[i, rows] = -np.inf
    return scores


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target among the finite scores (ties count against the target)."""
    target_scores = scores[np.arange(len(targets)), targets]
    return (scores >= target_scores[:, None]).sum(axis=1) - 1


def ranking_metrics(ranks: np.ndarray, cutoffs: Sequence[int]) -> dict[str, float]:
    """HR@k and NDCG@k for each cutoff and Recall@k (= HR@k with one held-out item)."""
    out: dict[str, float] = {}
    for k in cutoffs:
        hit = ranks < k
        out[f"hr@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
        out[f"recall@{k}"] = float(hit.mean())
    return out


def scorer_ranks(scorer: CatalogueScorer, eval_set: EvalSet, batch_size: int = 256) -> np.ndarray:
    """[U] 0-based rank of each user's held-out item under `scorer` (known items excluded)."""
    ranks = [np.zeros(0, dtype=np.int64)]
    for start in range(0, len(eval_set.targets), batch_size):
        positions = np.arange(start, min(start + batch_size, len(eval_set.targets)))
        scores = mask_known(scorer(positions), [eval_set.known[i] for i in positions])
        ranks.append(target_ranks(scores, eval_set.targets[positions]))
    return np.concatenate(ranks)


def evaluate_scorer(scorer: CatalogueScorer, eval_set: EvalSet, cutoffs: Sequence[int],
                    batch_size: int = 256) -> dict[str, float]:
    return ranking_metrics(scorer_ranks(scorer, eval_set, batch_size), cutoffs)


def tied_to_history(eval_set: EvalSet) -> np.ndarray:
    """[U] whether the held-out event shares its timestamp with the last event of the user's
    history: the users whose last events fall in the same second, where the order of those
    events is the split's tie rule rather than time (training/data/order.py)."""
    return np.array([len(times) > 0 and times[-1] == when for times, when in
                     zip(eval_set.histories.timestamps, eval_set.timestamps)], dtype=bool)


def metrics_by_group(ranks: dict[str, np.ndarray], groups: dict[str, np.ndarray],
                     cutoffs: Sequence[int]) -> dict[str, dict[str, dict[str, float]]]:
    """{group: {model: metrics over the group's users}} ({"users": n} for every group)."""
    return {group: {"users": {"n": float(mask.sum())},
                    **{name: ranking_metrics(r[mask], cutoffs) for name, r in ranks.items()}}
            for group, mask in groups.items() if mask.any()}


def candidate_recall(scorer: CatalogueScorer, eval_set: EvalSet, size: int,
                     batch_size: int = 256) -> float:
    """Share of held-out items found among the top-`size` candidates of `scorer`."""
    metrics = evaluate_scorer(scorer, eval_set, (size,), batch_size)
    return metrics[f"hr@{size}"]


def rerank_scorer(retrieval: CatalogueScorer, rerank: Callable[[np.ndarray, np.ndarray], np.ndarray],
                  eval_set: EvalSet, candidates: int) -> CatalogueScorer:
    """Top-`candidates` by retrieval, reordered by rerank(positions, candidate rows [B, C]) → [B, C].

    Items outside the candidate set keep their retrieval order below every candidate, so metrics
    at cutoffs ≤ candidates depend only on the reranker.
    """
    def score(positions: np.ndarray) -> np.ndarray:
        base = mask_known(retrieval(positions), [eval_set.known[i] for i in positions])
        top = np.argpartition(-base, candidates - 1, axis=1)[:, :candidates]
        rows = np.arange(len(positions))[:, None]
        valid = np.isfinite(base[rows, top])
        reranked = np.where(valid, rerank(positions, top), -np.inf)
        order = np.argsort(-reranked, axis=1, kind="stable")
        out = base.astype(np.float64) - 1e9  # below any candidate, retrieval order kept
        out[rows, top[rows, order]] = np.where(valid[rows, order],
                                               np.arange(candidates, 0, -1, dtype=np.float64), -np.inf)
        return out
    return score


def format_table(results: dict[str, dict[str, float]], columns: Sequence[str]) -> str:
    """Markdown table: one row per model, one column per metric."""
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, metrics in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{metrics.get(c, float('nan')):.4f}"
                                                 for c in columns) + " |")
    return "\n".join(lines)
