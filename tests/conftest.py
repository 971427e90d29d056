"""Shared pytest set-up: telemetry off, data paths, and the fixture plugins."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

for _var in ("BENTOML_DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
    os.environ.setdefault(_var, "true")

pytest_plugins = ("tests.support.fixtures_redis", "tests.support.fixtures_models",
                  "tests.support.fixtures_vectors")

REPO_ROOT = Path(__file__).resolve().parent.parent


def _ml100k_path() -> Path | None:
    """MovieLens 100K location from RECSYS_ML100K_PATH, else ../shared/data/ml-100k if present."""
    configured = os.environ.get("RECSYS_ML100K_PATH")
    candidate = Path(configured) if configured else REPO_ROOT.parent / "shared" / "data" / "ml-100k"
    return candidate if (candidate / "u.data").is_file() else None


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    path = _ml100k_path()
    if path is None:
        pytest.skip("MovieLens 100K not present (set RECSYS_ML100K_PATH)")
    return path


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Small batches: on 2 shared cores a second intra-op thread mostly waits (measured 4x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
