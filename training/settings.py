"""Typed settings for the training entry points, read once from RECSYS_* environment variables."""
from __future__ import annotations

from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class TrainingSettings(BaseSettings):
    """Where data comes from and where models go. Every field is also an env var RECSYS_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="RECSYS_", frozen=True, extra="ignore")

    data_path: Path | None = None  # None: the built-in synthetic dataset
    tracking_uri: str | None = None  # any MLflow tracking URI; default: sqlite under store_dir
    store_dir: Path = Path("mlstore")  # local MLflow store: mlruns.db + mlartifacts/
    workdir: Path = Path("artifacts/latest")  # bundles, evaluation report and plots of the last run
    epochs: int | None = None  # override the two-tower epochs (tests and quick runs)
    ranker_epochs: int | None = None
    synthetic_users: int = 1000
    synthetic_items: int = 2000
    synthetic_seed: int = 0  # the synthetic dataset's own seed: the data, not the models
    seed: int = 0  # the models' seed (initialisation, sampling)
    # torch threads of every model's training (default: the configs' `threads`, 1). A fixed count
    # keeps a seed's model the same on every machine; more train faster on larger data (the
    # sequence encoder's epoch on a MovieLens 1M-sized set: 0.69x the time on 2 threads).
    torch_threads: int | None = None
    # The latest share of the interactions, kept out of training and out of the served models'
    # user histories, for `python -m training replay` to send as live traffic (0: none).
    replay_holdout: float = 0.0

    @field_validator("data_path")
    @classmethod
    def _data_path_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.exists():
            raise ValueError(f"RECSYS_DATA_PATH={value} does not exist; point it at a MovieLens "
                             "directory, an interactions CSV/Parquet file or a directory of them")
        return value

    @field_validator("replay_holdout")
    @classmethod
    def _a_share(cls, value: float) -> float:
        if not 0 <= value < 1:
            raise ValueError(f"RECSYS_REPLAY_HOLDOUT must be in [0, 1), got {value}")
        return value

    @field_validator("epochs", "ranker_epochs", "synthetic_users", "synthetic_items",
                     "torch_threads")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value <= 0:
            raise ValueError(f"must be a positive integer, got {value}")
        return value
