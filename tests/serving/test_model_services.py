"""The user tower service's input: each alias's packed rows split by that model's own lengths."""
from __future__ import annotations

import numpy as np
import pytest

from serving.model_services import split_packed


def test_rows_split_into_history_and_attributes() -> None:
    packed = np.arange(2 * 11, dtype=np.int64).reshape(2, 11)

    history, attributes = split_packed(packed, history_len=8, attributes=3)

    assert history.tolist() == packed[:, :8].tolist()
    assert attributes.tolist() == packed[:, 8:].tolist()


def test_rows_packed_for_another_history_length_are_refused() -> None:
    packed = np.zeros((1, 20 + 3), dtype=np.int64)  # a champion's 20 items sent to an 8-item tower

    with pytest.raises(ValueError, match=r"shape \(1, 23\): this user tower reads 8 history "
                                         r"items and 3 attributes"):
        split_packed(packed, history_len=8, attributes=3)
