"""Two-tower embedding model: an item tower over id + content, a user tower over recent history
(causal self-attention over the ordered history, training/sequence_tower.py, or a pooled one).
An ensemble of such models, trained with their own seeds, is one model again: its towers side by
side (`join`), served by the same inner-product search."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from recsys.features import PAD, ItemCatalog, encode_history
from training.config import NO_HOLDOUT, RankerHoldout, TwoTowerConfig
from training.loop import run_epoch
from training.sequence_tower import ItemEmbedding, SequenceUserTower, Windows, sequence_windows
from training.sequences import UserSequences
from training.tower_parts import (
    add_history_inputs,
    add_item_inputs,
    add_user_head,
    attribute_vectors,
    item_inputs,
)

_MASKED = -1e4  # large negative instead of -inf: keeps softmax finite when a row is all padding
# Above this many items a softmax over the whole catalogue at every step costs too much (the
# item tower over every item, a [targets, items] product); training then samples.
FULL_SOFTMAX_ITEMS = 100_000


class ItemTower(nn.Module):
    """(item id, genre multi-hot, hashed title tokens) → L2-normalised vector [B, D]."""

    def __init__(self, n_rows: int, n_genres: int, config: TwoTowerConfig) -> None:
        super().__init__()
        add_item_inputs(self, n_rows, n_genres, config)
        d = config.dim
        self.mlp = nn.Sequential(nn.Linear(3 * d, config.hidden), nn.ReLU(), nn.Linear(config.hidden, d))

    def forward(self, item: torch.Tensor, genres: torch.Tensor, title_tokens: torch.Tensor) -> torch.Tensor:
        x = torch.cat(item_inputs(self, item, genres, title_tokens), dim=-1)
        return F.normalize(self.mlp(x), dim=-1)


class PooledUserTower(nn.Module):
    """(padded history [B, H], attribute ids [B, A]) → L2-normalised vector [B, D].

    History items are pooled with learned recency weights, so a new event moves the vector at once;
    there is no user-id embedding, so unknown users are encoded from what they did.
    """

    def __init__(self, n_rows: int, item_genres: torch.Tensor, cardinalities: list[int],
                 config: TwoTowerConfig) -> None:
        super().__init__()
        add_history_inputs(self, n_rows, item_genres, config.dim)
        self.position = nn.Parameter(torch.zeros(config.history_len))
        add_user_head(self, cardinalities, config, history_width=2 * config.dim)

    def forward(self, history: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
        mask = history != PAD
        logits = self.position.unsqueeze(0).expand_as(history).masked_fill(~mask, _MASKED)
        weights = (torch.softmax(logits, dim=-1) * mask.float()).unsqueeze(-1)
        pooled = (self.history(history) * weights).sum(1)
        genres = self.genre_proj((self.item_genres[history] * weights).sum(1))
        parts = [pooled, genres, *attribute_vectors(self.attributes, attributes)]
        return F.normalize(self.mlp(torch.cat(parts, dim=-1)), dim=-1)


class SideBySide(nn.Module):
    """Towers over the same inputs, their vectors concatenated: the inner product of a user's
    and an item's is the sum of the members' scores, so an ensemble stays one search."""

    def __init__(self, towers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.towers = nn.ModuleList(towers)

    def _joined(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.cat([tower(*inputs) for tower in self.towers], dim=-1)


class UserTowers(SideBySide):  # the ONNX exporter wants each tower's inputs named
    @property
    def attributes(self) -> nn.ModuleList:  # what export reads the attribute count from
        attributes: nn.ModuleList = self.towers[0].attributes
        return attributes

    def forward(self, history: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
        return self._joined(history, attributes)


class ItemTowers(SideBySide):
    def forward(self, item: torch.Tensor, genres: torch.Tensor,
                title_tokens: torch.Tensor) -> torch.Tensor:
        return self._joined(item, genres, title_tokens)


USER_ENCODERS = ("pooled", "sequence")
UserTower = SequenceUserTower | PooledUserTower | UserTowers


@dataclass
class TwoTowerModel:
    user_tower: UserTower
    item_tower: ItemTower | ItemEmbedding | ItemTowers
    config: TwoTowerConfig

    def parameters(self) -> list[nn.Parameter]:
        """Both towers' parameters, each once (the sequence tower shares the item embedding)."""
        unique = {id(p): p for tower in (self.user_tower, self.item_tower)
                  for p in tower.parameters()}
        return list(unique.values())


def join(members: Sequence[TwoTowerModel]) -> TwoTowerModel:
    """The members as one model whose scores are the sum of theirs (one member: itself)."""
    if len(members) == 1:
        return members[0]
    return TwoTowerModel(UserTowers([m.user_tower for m in members]),
                         ItemTowers([m.item_tower for m in members]), members[0].config)


def build_model(catalog: ItemCatalog, cardinalities: list[int], config: TwoTowerConfig) -> TwoTowerModel:
    """The pooled encoder with its own normalised item tower, or the sequence encoder (SASRec)
    with the item embedding it shares between its inputs and outputs."""
    if config.user_encoder not in USER_ENCODERS:
        raise ValueError(f"user_encoder {config.user_encoder!r}: expected one of "
                         f"{sorted(USER_ENCODERS)}")
    n_rows = catalog.size + 1
    genres = torch.from_numpy(catalog.genres)
    cardinalities = cardinalities or [1]
    torch.manual_seed(config.seed)  # initial weights too follow the seed: same config, same model
    if config.user_encoder == "pooled":
        return TwoTowerModel(PooledUserTower(n_rows, genres, cardinalities, config),
                             ItemTower(n_rows, catalog.genres.shape[1], config), config)
    items = ItemEmbedding(n_rows, catalog.genres.shape[1], config)
    titles = torch.from_numpy(catalog.title_tokens)
    return TwoTowerModel(SequenceUserTower(items, genres, titles, cardinalities, config), items,
                         config)


@dataclass(frozen=True)
class Examples:
    """Next-item training examples: history [N, H], attribute ids [N, A], target row [N]."""

    history: np.ndarray
    attributes: np.ndarray
    target: np.ndarray

    def target_rows(self) -> np.ndarray:
        return self.target


def training_examples(sequences: UserSequences, attributes: np.ndarray,
                      config: TwoTowerConfig) -> Examples | Windows:
    """What the configured user tower trains on: whole windows for the sequence encoder (a target
    at every position), one history per target for the pooled one."""
    make = sequence_windows if config.user_encoder == "sequence" else next_item_examples
    return make(sequences, attributes, config.history_len, config.ranker_holdout)


def next_item_examples(sequences: UserSequences, attributes: np.ndarray, history_len: int,
                       holdout: RankerHoldout = NO_HOLDOUT) -> Examples:
    """One example per event after a user's first, predicted from the events before it; each
    user's last events that `holdout` keeps out are left out (they train the ranker)."""
    histories, attrs, targets = [], [], []
    for u, seq in enumerate(sequences.sequences):
        for t in range(1, holdout.retained(len(seq))):
            histories.append(encode_history(seq[max(0, t - history_len):t], history_len))
            attrs.append(attributes[u])
            targets.append(seq[t])
    if not targets:
        raise ValueError("no training examples: every user has fewer than 2 training events")
    return Examples(np.stack(histories), np.stack(attrs), np.asarray(targets, dtype=np.int64))


def model_state(model: TwoTowerModel) -> dict[str, dict[str, torch.Tensor]]:
    """A detached copy of both towers' weights."""
    return {name: {k: v.detach().clone() for k, v in tower.state_dict().items()}
            for name, tower in (("user", model.user_tower), ("item", model.item_tower))}


def load_model_state(model: TwoTowerModel, state: dict[str, dict[str, torch.Tensor]]) -> None:
    model.user_tower.load_state_dict(state["user"])
    model.item_tower.load_state_dict(state["item"])


EpochCallback = Callable[[int, dict[str, float]], bool | None]  # True: stop training


def train_two_tower(
    model: TwoTowerModel, catalog: ItemCatalog, examples: Examples | Windows,
    on_epoch_end: EpochCallback | None = None,
) -> list[dict[str, float]]:
    """Softmax over the whole catalogue (`config.softmax == "full"`, up to FULL_SOFTMAX_ITEMS) or
    over the batch's distinct target items with a logQ correction; returns per-epoch stats.
    Stops early when `on_epoch_end` returns True."""
    config = model.config
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    counts = np.bincount(examples.target_rows(), minlength=catalog.size + 1).astype(np.float64)
    frequency = torch.from_numpy(counts / counts.sum())
    # Never a target (cold items, the padding row): their ids would keep their random init, so
    # they start as unknown (PAD), and the full softmax leaves them out so that they stay so.
    unknown = torch.from_numpy(counts == 0)
    with torch.no_grad():
        model.item_tower.item.weight[unknown] = 0.0
    genres = torch.from_numpy(catalog.genres)
    titles = torch.from_numpy(catalog.title_tokens)

    full = config.softmax == "full" and catalog.size + 1 <= FULL_SOFTMAX_ITEMS

    def batch_loss(idx: np.ndarray) -> torch.Tensor:
        users, target = _user_vectors(model, examples, idx)
        if full:
            return _full_softmax_loss(model, users, target, genres, titles, unknown)
        return _sampled_softmax_loss(model, users, target, genres, titles, frequency, rng)

    history = []
    for epoch in range(config.epochs):
        model.user_tower.train()
        model.item_tower.train()
        stats = {"loss": run_epoch(batch_loss, optimizer, len(examples.target), config.batch_size,
                                   rng, f"two-tower epoch {epoch + 1}/{config.epochs}")}
        stop = on_epoch_end(epoch, stats) if on_epoch_end is not None else None
        history.append(stats)
        if stop:
            break
    model.user_tower.eval()
    model.item_tower.eval()
    return history


def _user_vectors(model: TwoTowerModel, examples: Examples | Windows,
                  idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The user vectors [N, D] of a batch and their target rows [N]: one per example, or one per
    real position of each window."""
    history = torch.from_numpy(examples.history[idx])
    attributes = torch.from_numpy(examples.attributes[idx])
    target = torch.from_numpy(examples.target[idx])
    if target.dim() == 2:  # windows: a next-item target at every real position
        real = target != PAD
        return model.user_tower.states(history, attributes)[real], target[real]
    return model.user_tower(history, attributes), target


def _full_softmax_loss(model: TwoTowerModel, users: torch.Tensor, target: torch.Tensor,
                       genres: torch.Tensor, titles: torch.Tensor,
                       unknown: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each target against every catalogue item that is some training target.
    The rest (the padding row, items no one chose in training) are left out: they are not
    pushed down, so a cold item keeps a zero id embedding and is placed by its content alone."""
    rows = torch.arange(len(genres))
    logits = users @ model.item_tower(rows, genres, titles).T
    if model.config.temperature != 1.0:  # x / 1.0 is x: skipped, one [N, items] copy fewer
        logits = logits / model.config.temperature
    # in place: the matmul's and the division's backward do not read their output
    return F.cross_entropy(logits.masked_fill_(unknown, float("-inf")), target)


def _sampled_softmax_loss(model: TwoTowerModel, users: torch.Tensor, target: torch.Tensor,
                          genres: torch.Tensor, titles: torch.Tensor, frequency: torch.Tensor,
                          rng: np.random.Generator) -> torch.Tensor:
    """Cross-entropy of each target against the batch's distinct targets. The logQ correction
    subtracts the log probability that an item is among them (1 - (1 - q)^N for N targets drawn
    with its training frequency q), so popular items are not punished for being sampled often."""
    config = model.config
    items, labels = torch.unique(target, return_inverse=True)
    hidden = torch.from_numpy(rng.random(len(items)) < config.item_id_dropout)
    vectors = model.item_tower(items.masked_fill(hidden, PAD), genres[items], titles[items])
    log_inclusion = torch.log(-torch.expm1(len(target) * torch.log1p(-frequency[items])))
    logits = users @ vectors.T / config.temperature - log_inclusion.float()
    return F.cross_entropy(logits, labels)


@torch.no_grad()
def encode_items(model: TwoTowerModel, catalog: ItemCatalog, batch_size: int = 8192) -> np.ndarray:
    """[n+1, D] float32 item vectors; row 0 (padding) is all zeros."""
    model.item_tower.eval()
    rows = torch.arange(catalog.size + 1)
    genres = torch.from_numpy(catalog.genres)
    titles = torch.from_numpy(catalog.title_tokens)
    out = torch.cat([model.item_tower(rows[s:s + batch_size], genres[s:s + batch_size],
                                      titles[s:s + batch_size])
                     for s in range(0, len(rows), batch_size)])
    vectors = out.numpy().astype(np.float32)
    vectors[PAD] = 0.0
    return vectors


@torch.no_grad()
def encode_users(model: TwoTowerModel, history: np.ndarray, attributes: np.ndarray,
                 batch_size: int = 4096) -> np.ndarray:
    """[B, D] float32 user vectors from padded histories [B, H] and attribute ids [B, A]."""
    model.user_tower.eval()
    parts = [model.user_tower(torch.from_numpy(history[s:s + batch_size]),
                              torch.from_numpy(attributes[s:s + batch_size]))
             for s in range(0, len(history), batch_size)]
    return torch.cat(parts).numpy().astype(np.float32)
