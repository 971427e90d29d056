"""Loaders for tables already in the documented schema, and `load_dataset`, the one entry point."""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from recsys.errors import DataError
from training.data.movielens import (
    ML_DAT_REQUIRED,
    ML_LATEST_REQUIRED,
    load_movielens_100k,
    load_movielens_dat,
    load_movielens_latest,
)
from training.data.schema import ITEM_COLUMNS, ITEM_ID, USER_ID, Dataset
from training.data.synthetic import SyntheticConfig, generate_synthetic
from training.data.validation import validate

logger = logging.getLogger(__name__)

CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")
TABLE_SUFFIXES = CSV_SUFFIXES + PARQUET_SUFFIXES
_ID_COLUMNS = {USER_ID: str, ITEM_ID: str}


def load_table_dataset(
    interactions_path: str | Path,
    items_path: str | Path | None = None,
    users_path: str | Path | None = None,
) -> Dataset:
    """Interactions (+ optional items and users) tables, CSV or Parquet by suffix, in the schema.

    Without an items table, every interacted item gets a row with title = item id and no genres
    (the validation report counts them as items_without_metadata_added).
    The dataset is named after the interactions file's directory.
    """
    interactions_file = Path(interactions_path).expanduser()
    interactions = read_table(interactions_file)
    sources: dict[str, str | Path] = {"interactions": interactions_file}
    if items_path is None:
        # validate gives every interacted item a row (title = item id), counted in its report.
        logger.info("%s: no items table; item metadata is derived from the ids", interactions_file)
        items = pd.DataFrame({column: pd.Series(dtype=str) for column in ITEM_COLUMNS})
    else:
        items = read_table(Path(items_path).expanduser())
        sources["items"] = Path(items_path)
    users = None
    if users_path is not None:
        users = read_table(Path(users_path).expanduser())
        sources["users"] = Path(users_path)
    name = interactions_file.parent.name or interactions_file.stem
    dataset, report = validate(Dataset(name, interactions, items, users), sources=sources)
    logger.info("loaded %s; repairs: %s", interactions_file, report.as_dict())
    return dataset


def read_table(path: Path) -> pd.DataFrame:
    """One CSV or Parquet table; in CSVs only empty fields are missing and ids are read as text."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(f"{path} has unsupported suffix {path.suffix!r}; expected one of "
                        f"{', '.join(TABLE_SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"table file {path} does not exist")
    try:
        if suffix in PARQUET_SUFFIXES:
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype=_ID_COLUMNS, keep_default_na=False, na_values=[""])
    except (ValueError, OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {path} as a {suffix[1:]} table: {error}") from error


def load_dataset(path: str | Path | None, *, synthetic: SyntheticConfig | None = None) -> Dataset:
    """The one entry point: a synthetic dataset, MovieLens or generic tables, chosen by `path`.

    None → `generate_synthetic(synthetic or SyntheticConfig())`. A directory holding u.data →
    MovieLens 100K; ratings.csv + movies.csv → MovieLens latest (or 20M, 25M, 32M); ratings.dat +
    movies.dat → MovieLens 1M or 10M; interactions.csv/.parquet (with optional items.* and
    users.*) → generic tables. A file → a generic interactions table.
    """
    if path is None:
        return generate_synthetic(synthetic or SyntheticConfig())
    if synthetic is not None:
        raise ValueError(f"load_dataset got both a path ({path}) and a synthetic config; "
                         "expected one of them")
    root = Path(path).expanduser()
    if root.is_file():
        return load_table_dataset(root)
    if not root.is_dir():
        raise DataError(f"dataset path {root} does not exist; expected a directory or a "
                        f"{'/'.join(TABLE_SUFFIXES)} interactions file")
    return _load_directory(root)


def _load_directory(root: Path) -> Dataset:
    if (root / "u.data").is_file():
        return load_movielens_100k(root)
    if all((root / name).is_file() for name in ML_LATEST_REQUIRED):
        return load_movielens_latest(root)
    if all((root / name).is_file() for name in ML_DAT_REQUIRED):
        return load_movielens_dat(root)
    interactions = _table_in(root, "interactions")
    if interactions is not None:
        return load_table_dataset(interactions, _table_in(root, "items"), _table_in(root, "users"))
    raise DataError(
        f"{root} holds no known dataset layout; looked for u.data (MovieLens 100K), "
        f"ratings.csv + movies.csv (MovieLens latest, 20M, 25M, 32M), ratings.dat + movies.dat "
        f"(MovieLens 1M, 10M) and interactions"
        f"{'/'.join(TABLE_SUFFIXES)} (generic tables, with optional items.* and users.*)"
    )


def _table_in(root: Path, stem: str) -> Path | None:
    candidates = [root / f"{stem}{suffix}" for suffix in TABLE_SUFFIXES]
    found = [path for path in candidates if path.is_file()]
    if len(found) > 1:
        raise DataError(f"{root} has several {stem} tables {[p.name for p in found]}; "
                        "expected exactly one")
    return found[0] if found else None
