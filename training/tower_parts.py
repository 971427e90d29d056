"""What both user towers are built from: the history items' inputs (id embedding and genres)
and the head over the pooled history and the user's attributes."""
from __future__ import annotations

import torch
from torch import nn

from recsys.features import PAD
from training.config import TwoTowerConfig


def add_history_inputs(tower: nn.Module, n_rows: int, item_genres: torch.Tensor,
                       dim: int) -> None:
    """`tower.history` (item id embedding), `tower.item_genres` (a buffer) and
    `tower.genre_proj`: a history item is its id embedding plus its projected genres."""
    tower.history = nn.Embedding(n_rows, dim, padding_idx=PAD)
    tower.register_buffer("item_genres", item_genres, persistent=True)
    tower.genre_proj = nn.Linear(item_genres.shape[1], dim, bias=False)


def add_item_inputs(tower: nn.Module, n_rows: int, n_genres: int, config: TwoTowerConfig) -> None:
    """`tower.item` (id embedding), `tower.title` (title-token embedding) and `tower.genres` (a
    projection of the genre multi-hot): what both item towers read an item from."""
    tower.item = nn.Embedding(n_rows, config.dim, padding_idx=PAD)
    tower.title = nn.Embedding(config.title_buckets, config.dim, padding_idx=PAD)
    tower.genres = nn.Linear(n_genres, config.dim, bias=False)


def item_inputs(tower: nn.Module, item: torch.Tensor, genres: torch.Tensor,
                title_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(id embedding, projected genres, mean title-token embedding), each [..., D], of items
    [...] with genres [..., G] and title tokens [..., T] (0 pads), through add_item_inputs'
    layers."""
    mask = (title_tokens != PAD).unsqueeze(-1).to(genres.dtype)
    title = (tower.title(title_tokens) * mask).sum(-2) / mask.sum(-2).clamp(min=1.0)
    return tower.item(item), tower.genres(genres), title


def add_user_head(tower: nn.Module, cardinalities: list[int], config: TwoTowerConfig,
                  history_width: int) -> None:
    """`tower.attributes` (an embedding per user attribute) and `tower.mlp`, which maps the
    history summary (`history_width` wide) and the attributes to the user vector."""
    tower.attributes = nn.ModuleList(
        nn.Embedding(c, config.attribute_dim, padding_idx=PAD) for c in cardinalities)
    width = history_width + config.attribute_dim * len(cardinalities)
    tower.mlp = nn.Sequential(nn.Linear(width, config.hidden), nn.ReLU(),
                              nn.Linear(config.hidden, config.dim))


def attribute_vectors(attributes: nn.ModuleList, ids: torch.Tensor) -> list[torch.Tensor]:
    """[B, attribute_dim] per attribute, from attribute ids [B, A]."""
    return [embedding(ids[:, j]) for j, embedding in enumerate(attributes)]
