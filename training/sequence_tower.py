"""A sequence-aware user tower: causal self-attention over the ordered history (SASRec's family).

Why this model: the held-out event is the *next* one, and what a user does next depends on the
order of what they did last (a film series, a genre binge), which pooling throws away. A small
causal transformer reads the order, trains on every position of a sequence at once (one window
gives up to `history_len` next-item examples for the price of one forward pass), and at serving
time is one ONNX graph of a few matrix products, well under a millisecond at history 50.

The tower keeps the two-tower contract: (padded history [B, H], attribute ids [B, A]) → an
L2-normalised vector [B, D] in the item tower's space, so the same FAISS index serves it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from recsys.features import PAD
from training.config import TwoTowerConfig
from training.sequences import UserSequences
from training.tower_parts import add_history_inputs, add_user_head, attribute_vectors

_MASKED = -1e4  # additive attention mask: finite, so a row that sees only itself stays finite


class CausalBlock(nn.Module):
    """Pre-norm transformer block; attention written out (no fused kernels) so that the ONNX
    export and the eager model run the same operations."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(4 * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, h, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).reshape(b, h, 3, self.heads, d // self.heads) \
            .permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + mask
        attended = (self.dropout(torch.softmax(scores, dim=-1)) @ v).transpose(1, 2).reshape(b, h, d)
        x = x + self.dropout(self.out(attended))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class SequenceUserTower(nn.Module):
    """(padded history [B, H], most recent last; attribute ids [B, A]) → L2-normalised [B, D].

    Each history item is its id embedding plus its genres; a learned position embedding counts
    back from the most recent slot, so a left-padded history of any length lines up the same way.
    `states` gives the vector after every position (training's next-item targets); `forward`
    the one after the most recent item (serving).
    """

    def __init__(self, n_rows: int, item_genres: torch.Tensor, cardinalities: list[int],
                 config: TwoTowerConfig) -> None:
        super().__init__()
        d = config.dim
        add_history_inputs(self, n_rows, item_genres, d)
        self.position = nn.Embedding(config.history_len, d)
        self.blocks = nn.ModuleList(CausalBlock(d, config.heads, config.dropout)
                                    for _ in range(config.layers))
        self.norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(config.dropout)
        self.recency = nn.Parameter(torch.zeros(config.history_len))  # logit per age: 0 = newest
        add_user_head(self, cardinalities, config, history_width=2 * d)

    def states(self, history: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
        """[B, H, D] normalised user vectors after each position (pads give meaningless rows)."""
        length = history.shape[1]
        items = self.history(history) + self.genre_proj(self.item_genres[history])
        real = (history != PAD).unsqueeze(-1).to(items.dtype)
        x = self.dropout(items * math.sqrt(items.shape[-1]) + self.position.weight[-length:]) * real
        mask = _attention_mask(history)
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        attrs = attribute_vectors(self.attributes, attributes)
        attrs_per_position = torch.cat(attrs, dim=-1).unsqueeze(1).expand(-1, length, -1)
        parts = [x, self._recency_pooled(items, mask), attrs_per_position]
        return F.normalize(self.mlp(torch.cat(parts, dim=-1)), dim=-1)

    def _recency_pooled(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, H, D]: after each position, the mean of the items so far weighted by a learned
        weight per age (how many events ago): the order-light summary the pooled tower gave."""
        length = items.shape[1]
        positions = torch.arange(length, device=items.device)
        age = (positions.unsqueeze(1) - positions.unsqueeze(0)).clamp(min=0)
        weights = torch.softmax(self.recency[age].unsqueeze(0).unsqueeze(1) + mask, dim=-1)
        return (weights.squeeze(1) @ items)

    def forward(self, history: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
        return self.states(history, attributes)[:, -1]


def _attention_mask(history: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, H] additive mask: position i sees the real items at positions <= i, and itself
    (so a padding row, or an empty history, never has nothing to attend to)."""
    length = history.shape[1]
    positions = torch.arange(length, device=history.device)
    causal = positions.unsqueeze(1) >= positions.unsqueeze(0)
    real = (history != PAD).unsqueeze(1)
    allowed = (causal.unsqueeze(0) & real) | torch.eye(length, dtype=torch.bool,
                                                        device=history.device).unsqueeze(0)
    return torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, _MASKED) \
        .unsqueeze(1)


@dataclass(frozen=True)
class Windows:
    """Training windows: histories [W, H] and the next item after each position [W, H] (PAD: no
    target), left-padded, and the user's attribute ids [W, A]."""

    history: np.ndarray
    target: np.ndarray
    attributes: np.ndarray

    def target_rows(self) -> np.ndarray:
        return self.target[self.target != PAD]


def sequence_windows(sequences: UserSequences, attributes: np.ndarray, length: int,
                     holdout: int = 0) -> Windows:
    """Each user's training sequence (less the last `holdout` events, which train the ranker) cut
    from the end into windows of `length` next-item targets, every event after the first a target
    exactly once. Cutting from the end keeps the most recent events in one window with their
    longest context, as serving sees them."""
    inputs, targets, attrs = [], [], []
    for u, full in enumerate(sequences.sequences):
        seq = full[:len(full) - holdout] if holdout else full
        end = len(seq)
        while end > 1:
            start = max(1, end - length)
            window_in = np.zeros(length, dtype=np.int64)
            window_out = np.zeros(length, dtype=np.int64)
            window_in[length - (end - start):] = seq[start - 1:end - 1]
            window_out[length - (end - start):] = seq[start:end]
            inputs.append(window_in)
            targets.append(window_out)
            attrs.append(attributes[u])
            end = start
    if not inputs:
        raise ValueError("no training examples: every user has fewer than 2 training events")
    return Windows(np.stack(inputs), np.stack(targets), np.stack(attrs))
