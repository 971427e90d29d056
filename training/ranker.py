"""Ranker training: DCN-v2 over the shared ranking features, trained on retrieved candidates."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from recsys.context import UNKNOWN_GAP_FEATURE, Context, context_features
from recsys.features import (
    DENSE_FEATURES,
    FeatureScaler,
    ItemCatalog,
    dense_features,
    encode_history,
    ranker_inputs,
    user_profile,
)
from training.config import RankerConfig, RankerHoldout
from training.loop import run_epoch
from training.sequences import UserSequences
from training.two_tower import EpochCallback

# (history [B, H], attributes [B, A]) -> user vectors [B, D]
UserEncoder = Callable[[np.ndarray, np.ndarray], np.ndarray]


class CrossNetwork(nn.Module):
    """DCN-v2 cross layers: x_{l+1} = x0 * (W x_l + b) + x_l."""

    def __init__(self, width: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class DCNRanker(nn.Module):
    """features [N, F] → score [N] (a logit: higher ranks first).

    The logit is the retrieval logit (the standardised two-tower similarity in column 0, scaled
    back to similarity / temperature) plus a DCN correction whose head starts at zero: an untrained
    ranker ranks exactly like retrieval, and training only moves it where the data says so.
    """

    def __init__(self, n_features: int, config: RankerConfig, prior_scale: float = 0.0) -> None:
        super().__init__()
        self.cross = CrossNetwork(n_features, config.cross_layers)
        self.deep = nn.Sequential(
            nn.Linear(n_features, config.hidden), nn.ReLU(),
            nn.Linear(config.hidden, config.hidden // 2), nn.ReLU(),
        )
        self.head = nn.Linear(n_features + config.hidden // 2, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("prior_scale", torch.tensor(float(prior_scale)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.cross(features), self.deep(features)], dim=-1)
        return self.head(x).squeeze(-1) + self.prior_scale * features[:, 0]


@dataclass(frozen=True)
class RankingQueries:
    """Groups of candidates per query: column 0 is the positive, the rest are negatives.

    dense: raw dense features [Q, G, F]; candidates [Q, G]; user_vectors [Q, D].
    """

    dense: np.ndarray
    candidates: np.ndarray
    user_vectors: np.ndarray

    def inputs(self, item_vectors: np.ndarray, scaler: FeatureScaler) -> np.ndarray:
        """[Q, G, F + 2D] ranker inputs."""
        q, g, f = self.dense.shape
        users = np.repeat(self.user_vectors, g, axis=0)
        flat = ranker_inputs(self.dense.reshape(q * g, f), users, self.candidates.reshape(-1),
                             item_vectors, scaler)
        return flat.reshape(q, g, -1)


def build_queries(
    sequences: UserSequences, attributes: np.ndarray, catalog: ItemCatalog,
    item_vectors: np.ndarray, encode_users: UserEncoder, history_len: int,
    holdout: RankerHoldout, config: RankerConfig,
) -> RankingQueries:
    """For each user's last training events that `holdout` kept out of the two-tower model:
    pair the true item with hard negatives retrieved from the history before it, and random ones.

    Negatives never include any item of the user's training sequence: the items they went on to
    interact with after the query are relevant, and labelling them negative teaches the ranker to
    bury exactly the items that matter.
    """
    rng = np.random.default_rng(config.seed)
    histories, attrs, positives, contexts, known = [], [], [], [], []
    for u, (seq, times) in enumerate(zip(sequences.sequences, sequences.timestamps)):
        for t in range(max(1, holdout.retained(len(seq))), len(seq)):
            histories.append(encode_history(seq[max(0, t - history_len):t], history_len))
            attrs.append(attributes[u])
            positives.append(seq[t])
            contexts.append(Context(hour=int(times[t] // 3600 % 24),
                                    seconds_since_last_event=float(times[t] - times[t - 1])))
            known.append(seq)
    history = np.stack(histories)
    users = encode_users(history, np.stack(attrs))
    negatives = _sample_negatives(users, known, item_vectors, config, rng)
    candidates = np.concatenate([np.asarray(positives)[:, None], negatives], axis=1)
    group = candidates.shape[1]
    dense = np.empty((len(candidates), group, len(DENSE_FEATURES)), dtype=np.float32)
    for q in tqdm(range(len(candidates)), desc="ranking features", leave=False):
        profile = user_profile(history[q], catalog)
        context = context_features([contexts[q]])
        dense[q] = dense_features(users[q], profile, candidates[q], item_vectors, catalog, context)
    return RankingQueries(dense, candidates, users)


def _sample_negatives(users: np.ndarray, known: list[np.ndarray], item_vectors: np.ndarray,
                      config: RankerConfig, rng: np.random.Generator) -> np.ndarray:
    n_rows = len(item_vectors)
    out = np.empty((len(users), config.hard_negatives + config.random_negatives), dtype=np.int64)
    block = max(1, (1 << 25) // n_rows)  # ~128 MB of scores per block, whatever the catalogue
    pool = min(config.retrieval_candidates, n_rows - 1)
    for start in range(0, len(users), block):
        scores = users[start:start + block] @ item_vectors.T
        scores[:, 0] = -np.inf
        for i in range(len(scores)):
            scores[i, known[start + i]] = -np.inf
        top = np.argpartition(-scores, pool - 1, axis=1)[:, :pool]
        for i, row in enumerate(top):
            q = start + i
            hard = rng.choice(row, size=config.hard_negatives, replace=False)
            rand = rng.integers(1, n_rows, size=config.random_negatives)
            taken = np.isin(rand, known[q])
            rand[taken] = hard[: taken.sum()] if taken.sum() <= len(hard) else hard[0]
            out[q] = np.concatenate([hard, rand])
    return out


Validator = Callable[[DCNRanker, FeatureScaler], float]  # higher is better


def train_ranker(
    queries: RankingQueries, item_vectors: np.ndarray, config: RankerConfig,
    on_epoch_end: EpochCallback | None = None, validate: Validator | None = None,
    temperature: float = 0.05,
) -> tuple[DCNRanker, FeatureScaler]:
    """Listwise softmax loss over each query's group (the positive is column 0).

    With `config.average_from_epoch`, the ranker's weights are the mean of its weights at the end
    of every epoch from that one on (stochastic weight averaging: torch's AveragedModel); without
    it, the epoch that scored best on validation. With `validate`, the model is also scored before
    training and after every epoch, and where the kept weights do not beat the untrained model
    (exactly retrieval order) on validation, the untrained model is returned.
    """
    start = config.average_from_epoch
    if start is not None and not 1 <= start <= config.epochs:
        raise ValueError(f"average_from_epoch must be an epoch from 1 to {config.epochs} "
                         f"(the ranker's epochs) or None, got {start}")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    q, g, f = queries.dense.shape
    scaler = FeatureScaler.fit(queries.dense.reshape(q * g, f))
    inputs = torch.from_numpy(queries.inputs(item_vectors, scaler))
    model = DCNRanker(inputs.shape[-1], config, prior_scale=float(scaler.std[0]) / temperature)
    untrained = _state(model)
    untrained_score = validate(model.eval(), scaler) if validate else -np.inf
    best_score, best_epoch, best_state = untrained_score, -1, untrained
    averaged_epochs = range(start - 1, config.epochs) if start is not None else range(0)
    averaged = AveragedModel(model) if averaged_epochs else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    labels = torch.zeros(config.batch_size, dtype=torch.long)
    hide_gap = GapHider(scaler, config.unknown_gap_share, config.seed)

    def batch_loss(positions: np.ndarray) -> torch.Tensor:
        batch = hide_gap(inputs[torch.from_numpy(positions)])
        logits = model(batch.reshape(-1, batch.shape[-1])).reshape(len(positions), g)
        return F.cross_entropy(logits, labels[:len(positions)])

    for epoch in range(config.epochs):
        model.train()
        stats = {"loss": run_epoch(batch_loss, optimizer, q, config.batch_size, rng,
                                   f"ranker epoch {epoch + 1}/{config.epochs}")}
        if averaged is not None and epoch in averaged_epochs:
            averaged.update_parameters(model)
        if validate is not None:
            stats["val_hr_at_10"] = validate(model.eval(), scaler)
            if averaged is None and stats["val_hr_at_10"] > best_score:
                best_score, best_epoch, best_state = stats["val_hr_at_10"], epoch, _state(model)
        if on_epoch_end is not None:
            on_epoch_end(epoch, stats)
    if averaged is not None:
        model.load_state_dict(averaged.module.state_dict())
    if validate is None:
        return model.eval(), scaler
    if averaged is not None:
        kept_score = validate(model.eval(), scaler)
        summary = {"val_hr_at_10_averaged": kept_score}
    else:
        model.load_state_dict(best_state)
        kept_score, summary = best_score, {"best_epoch": float(best_epoch + 1)}
    if kept_score <= untrained_score:  # a tie keeps retrieval order, which costs nothing
        model.load_state_dict(untrained)
        summary["kept_retrieval_order"] = 1.0
    if on_epoch_end is not None:
        on_epoch_end(config.epochs, summary)
    return model.eval(), scaler


class GapHider:
    """Shows a share of each batch's queries with the time since the user's last event unknown
    (read as MAX_HOURS_SINCE_LAST_EVENT), as every user back after a month's absence is served.

    Without it the ranker learns that value from the few training queries with a gap that long
    (0.7% on ML-100K) and ranks such users far below retrieval order (README, Offline evaluation).
    Its own generator: the batches' order is the same whatever the share."""

    def __init__(self, scaler: FeatureScaler, share: float, seed: int) -> None:
        column = DENSE_FEATURES.index("hours_since_last_event")
        self.column, self.share = column, share
        self.value = float((UNKNOWN_GAP_FEATURE - scaler.mean[column]) / scaler.std[column])
        self.rng = np.random.default_rng([seed, 1])

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.share <= 0:
            return batch
        hidden = torch.from_numpy(self.rng.random(len(batch)) < self.share)
        batch = batch.clone()
        batch[hidden, :, self.column] = self.value
        return batch


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def score(model: DCNRanker, inputs: np.ndarray) -> np.ndarray:
    """[N] float32 scores for ranker inputs [N, F + 2D]."""
    return model(torch.from_numpy(np.ascontiguousarray(inputs))).numpy().astype(np.float32)
