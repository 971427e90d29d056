"""The torch thread count training runs with: part of what makes a run reproducible."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch intra-op threads, then restore the previous count.

    Float sums are reordered across threads, so the same seed gives different weights on a
    2-core and a 16-core machine; a fixed count makes a seed mean one model everywhere.
    """
    if n < 1:
        raise ValueError(f"threads={n}; expected a positive thread count")
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
