"""The load generator's bookkeeping: per-thread request caps and client latency percentiles."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.load import LoadError, _per_thread, client_percentiles


@pytest.mark.parametrize(("cap", "threads", "expected"),
                         [(0, 8, 0), (20_000, 1, 20_000), (20_000, 64, 313), (3, 8, 1)])
def test_a_run_cap_is_split_across_threads_rounding_up(cap: int, threads: int,
                                                       expected: int) -> None:
    assert _per_thread(cap, threads) == expected


def test_client_percentiles_come_from_the_samples_themselves() -> None:
    samples = [1.0] * 980 + [100.0] * 20  # 2 % slow requests
    out = client_percentiles(samples)
    assert out["p50"] == 1.0 and out["p95"] == 1.0
    assert out["p99"] == 100.0 and out["max"] == 100.0
    assert out["mean"] == pytest.approx(np.mean(samples), abs=1e-3)
    assert list(out) == ["p50", "p75", "p90", "p95", "p99", "p99.9", "mean", "max"]


def test_a_run_without_a_completed_request_is_an_error() -> None:
    with pytest.raises(LoadError, match="no request"):
        client_percentiles([])
