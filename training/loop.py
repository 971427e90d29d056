"""One training epoch: shuffled mini-batches, AdamW steps and a progress bar, for both models."""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm


def run_epoch(batch_loss: Callable[[np.ndarray], torch.Tensor], optimizer: torch.optim.Optimizer,
              n: int, batch_size: int, rng: np.random.Generator, desc: str) -> float:
    """One pass over `n` examples in a random order, `batch_size` at a time; `batch_loss` gets
    the positions of one batch. Returns the mean batch loss."""
    order = rng.permutation(n)
    steps = math.ceil(n / batch_size)
    total = 0.0
    bar = tqdm(range(steps), desc=desc, leave=False)
    for step in bar:
        loss = batch_loss(order[step * batch_size:(step + 1) * batch_size])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
        bar.set_postfix(loss=f"{total / (step + 1):.4f}")
    return total / steps
