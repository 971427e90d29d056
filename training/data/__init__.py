"""The data layer: loaders, validation, synthetic data and the leave-last-out split."""
from __future__ import annotations

from training.data.download import download_movielens
from training.data.generic import load_dataset
from training.data.schema import Dataset, Split
from training.data.split import leave_last_out
from training.data.synthetic import SyntheticConfig, generate_synthetic
from training.data.validation import RepairReport, validate

__all__ = [
    "Dataset",
    "RepairReport",
    "Split",
    "SyntheticConfig",
    "download_movielens",
    "generate_synthetic",
    "leave_last_out",
    "load_dataset",
    "validate",
]
