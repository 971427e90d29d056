"""Training configurations: dataclasses logged to MLflow as params and saved inside every bundle."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class RankerHoldout:
    """How many of a user's last training events are kept out of retrieval's training to become
    the ranker's queries: `most`, and never more than `share` of the user's events (rounded
    down), so that retrieval still learns from a user with a short history. On MovieLens 100K
    (18 training events a user or more) the share never binds."""

    most: int = 0
    share: float = 1.0

    def events(self, lengths: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """The events kept out of each history of `lengths` events (an int for an int)."""
        return np.minimum(self.most, np.floor(np.asarray(lengths) * self.share)).astype(np.int64)

    def retained(self, length: int) -> int:
        """How many of a user's `length` training events retrieval trains on: the first ones."""
        return length - int(self.events(length))

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> RankerHoldout:
        """The holdout a TwoTowerConfig (as a bundle records it) trained with; a bundle from
        before the share kept out `ranker_holdout_events` of every user."""
        return cls(int(config["ranker_holdout_events"]),
                   float(config.get("ranker_holdout_share", 1.0)))


NO_HOLDOUT = RankerHoldout()  # every event trains retrieval


@dataclass(frozen=True)
class TwoTowerConfig:
    dim: int = 64
    hidden: int = 128
    history_len: int = 20
    user_encoder: str = "pooled"  # "pooled": recency-weighted mean; "sequence": causal attention
    layers: int = 2  # sequence encoder only: transformer blocks, heads and dropout
    heads: int = 2
    dropout: float = 0.5
    patience: int = 10  # epochs without a better validation NDCG@10 before training stops
    attribute_dim: int = 8
    title_buckets: int = 8192
    title_tokens: int = 16
    epochs: int = 8  # validation HR@10 on MovieLens 100K peaks around epochs 5-8
    batch_size: int = 512
    learning_rate: float = 3e-3
    weight_decay: float = 1e-5
    temperature: float = 0.05
    item_id_dropout: float = 0.1  # share of item ids hidden in training so content features learn too
    # "sampled": a softmax over each batch's distinct targets with a logQ correction; "full": over
    # the whole catalogue (sampled all the same above two_tower.FULL_SOFTMAX_ITEMS items)
    softmax: str = "sampled"
    # Each user's last N training events are kept out of two-tower training and become the
    # ranker's training queries, so the ranker sees honest (not memorised) similarities.
    ranker_holdout_events: int = 5
    # ... but never more than this share of a user's training events (RankerHoldout)
    ranker_holdout_share: float = 0.5
    seed: int = 0
    threads: int = 1  # torch threads: a fixed count keeps a seed's model identical across machines
    # Models trained one after another with seeds seed * members + 0, 1, ..., served as one: their
    # vectors side by side, each item scored by the sum of their scores (training/two_tower.py).
    members: int = 1

    @property
    def ranker_holdout(self) -> RankerHoldout:
        return RankerHoldout(self.ranker_holdout_events, self.ranker_holdout_share)


# The sequence encoder's own settings: SASRec's architecture (2 blocks, 2 heads, history 50, a
# softmax over every item at every position, early stopping on validation NDCG@10), trained on
# whole windows (up to history_len targets each). Batch, learning rate and dropout are trial 5
# of `python -m training tune --trials 8 --seeds 0 1 --encoders sequence` on MovieLens 100K
# (2026-12-06): mean validation NDCG@10 0.1206 over the two seeds against 0.1179 for SASRec's
# reference settings (batch 16, lr 1e-3, dropout 0.2; trial 0). Trial 6 scored 0.1210 with 128
# dims; within the seeds' spread of trial 5, at twice the serving cost and 1.8x the training time.
# One member: two (members=2) raised retrieval's test HR@10 over 5 seeds from 0.1977 to 0.2095
# but the pipeline's only from 0.2189 to 0.2223, and the ranker's HR@10 gain over retrieval was
# then no longer significant, at twice the training time and the user tower's cost (README:
# Offline evaluation).
SEQUENCE_TOWER = TwoTowerConfig(user_encoder="sequence", history_len=50, epochs=200, batch_size=64,
                                learning_rate=2.62e-3, weight_decay=0.0, temperature=1.0,
                                item_id_dropout=0.0, dropout=0.44, softmax="full")


@dataclass(frozen=True)
class RankerConfig:
    retrieval_candidates: int = 200  # hard negatives are drawn from this many retrieved items
    hard_negatives: int = 23
    random_negatives: int = 8
    cross_layers: int = 2
    hidden: int = 64  # chosen on MovieLens 100K validation HR@10 (128/6 epochs overfit)
    epochs: int = 8  # 8 beat 4 on ML-100K validation HR@10 (with the best epoch kept)
    # The weights served: the mean of the weights at the end of every epoch from this one on
    # (stochastic weight averaging), or None for the single epoch with the best validation HR@10.
    # Chosen on validation users the choice of epoch did not see (half the users pick the epoch,
    # the other half score it; 200 splits, 5 seeds on ML-100K): best epoch 0.252, the mean from
    # epoch 1 0.261, from 2 0.258, 4 0.257, 6 0.258 (README, Offline evaluation).
    average_from_epoch: int | None = 1
    batch_size: int = 256  # queries per batch; each query is 1 positive + negatives
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    # share of each batch's queries shown with the time since the last event unknown (the
    # 30-day cap), so users back after a long absence are ranked as well as the rest. Chosen on
    # validation HR@10, the real gaps' and the unknown ones' averaged, 5 seeds on ML-100K:
    # 0 -> 0.199, 0.05 -> 0.254, 0.1 -> 0.261, 0.25 -> 0.260, 0.5 -> 0.263 (README)
    unknown_gap_share: float = 0.5
    seed: int = 0
    threads: int = 1  # torch threads (see TwoTowerConfig.threads)


@dataclass(frozen=True)
class FallbackConfig:
    inverse_regularization: float = 1.0
    max_iter: int = 300
    max_rows: int = 200_000  # subsample of ranking pairs the fallback trains on
    seed: int = 0


@dataclass(frozen=True)
class EvalConfig:
    candidates: int = 200  # candidate-set size the service retrieves before ranking
    cutoffs: tuple[int, ...] = (10, 50)
    als_factors: tuple[int, ...] = (32, 64)
    als_regularization: tuple[float, ...] = (0.01, 0.1)
    als_iterations: int = 15
    ease_regularization: tuple[float, ...] = (50.0, 200.0, 500.0, 1000.0)
    # Query seeds of the search evaluation (known-item and personalised category queries on the
    # test split, with the served search settings: training/search_step.py); () skips it. Its
    # time is logged as search_evaluation_seconds.
    search_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class PipelineConfig:
    two_tower: TwoTowerConfig = field(default_factory=TwoTowerConfig)
    # Tried beside two_tower; the encoder with the better validation NDCG@10 is kept. None: only
    # two_tower. Which one wins depends on the data (on ML-100K the sequence encoder, on all
    # 5 seeds: README, Offline evaluation).
    sequence_tower: TwoTowerConfig | None = SEQUENCE_TOWER
    ranker: RankerConfig = field(default_factory=RankerConfig)
    fallback: FallbackConfig = field(default_factory=FallbackConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)

    def user_encoders(self) -> list[TwoTowerConfig]:
        """The embedding configurations to train, in order; the best on validation is kept."""
        return [self.two_tower] + ([self.sequence_tower] if self.sequence_tower else [])


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dataclass → flat {"two_tower.dim": 64, ...} for mlflow.log_params."""
    out: dict[str, Any] = {}
    for key, value in asdict(config).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_dict(value, f"{name}."))
        else:
            out[name] = value
    return out


def flatten_dict(values: dict[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flatten_dict(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
