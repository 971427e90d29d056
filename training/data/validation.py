"""Schema enforcement for a Dataset: hard errors for unusable data, counted and logged repairs."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys.errors import DataError
from training.data.schema import (
    DESCRIPTION,
    GENRE_SEPARATOR,
    GENRES,
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    ITEM_ID,
    RATING,
    TIMESTAMP,
    TITLE,
    USER_ID,
    Dataset,
)

logger = logging.getLogger(__name__)

MAX_REPORTED_ROWS = 5
_NEEDS_GENRE_CLEANUP = r"^\||\|$|\|\||^\s|\s$|\s\||\|\s"


@dataclass(frozen=True)
class RepairReport:
    """How many rows `validate` changed, per kind of repair (0 everywhere for clean data).

    cold_items_kept is not a repair: items with metadata but no interactions are legitimate
    cold-start items and stay in `items`.
    """

    exact_duplicates_dropped: int = 0
    duplicate_events_dropped: int = 0
    items_without_metadata_added: int = 0
    cold_items_kept: int = 0
    duplicate_item_rows_dropped: int = 0
    missing_titles_filled: int = 0
    missing_genres_filled: int = 0
    missing_descriptions_filled: int = 0
    genres_normalised: int = 0
    unknown_user_rows_dropped: int = 0
    duplicate_user_rows_dropped: int = 0
    missing_user_attributes_filled: int = 0

    def as_dict(self) -> dict[str, int]:
        """Flat {repair kind: count}, ready for `mlflow.log_metrics`."""
        return {key: int(value) for key, value in asdict(self).items()}

    @property
    def total_repairs(self) -> int:
        """Rows changed or dropped, not counting cold items (which are kept unchanged)."""
        return sum(v for k, v in self.as_dict().items() if k != "cold_items_kept")


def validate(
    dataset: Dataset, *, sources: Mapping[str, str | Path] | None = None
) -> tuple[Dataset, RepairReport]:
    """Return `dataset` in the documented schema (see `schema.py`) and what was repaired.

    `sources` maps a table name ("interactions", "items", "users") to the file it came from, so
    error messages can name it. Row numbers in messages are 0-based positions in that table.
    Raises DataError for missing columns, empty or missing ids, empty interactions, non-numeric
    or non-positive ratings and non-numeric or fractional timestamps.
    """
    names = {table: _label(table, sources) for table in ("interactions", "items", "users")}
    counts: dict[str, int] = {}
    interactions = _clean_interactions(dataset.interactions, names["interactions"], counts)
    items = _clean_items(dataset.items, interactions, names["items"], counts)
    users = (None if dataset.users is None
             else _clean_users(dataset.users, interactions, names["users"], counts))
    report = RepairReport(**counts)
    return Dataset(dataset.name, interactions, items, users, report.as_dict()), report


def _label(table: str, sources: Mapping[str, str | Path] | None) -> str:
    return f"{table} ({sources[table]})" if sources and table in sources else table


def _record(counts: dict[str, int], kind: str, n: int, message: str) -> None:
    counts[kind] = counts.get(kind, 0) + int(n)
    if n:
        level = logging.INFO if kind == "cold_items_kept" else logging.WARNING
        logger.log(level, "%s: %d", message, n)


def _require_columns(frame: pd.DataFrame, required: tuple[str, ...], label: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(
            f"{label} is missing required column(s) {missing}; "
            f"expected {list(required)}, found {list(map(str, frame.columns))}"
        )


def _examples(values: pd.Series, bad: npt.NDArray[np.bool_]) -> str:
    """'row 3 'abc', row 7 None (and 12 more)': the first offending rows (0-based positions)."""
    positions = np.flatnonzero(bad)[:MAX_REPORTED_ROWS]
    shown = ", ".join(f"row {p} {values.iloc[p:p + 1].tolist()[0]!r}" for p in positions)
    more = int(bad.sum()) - len(positions)
    return shown + (f" (and {more} more)" if more > 0 else "")


def _isin(values: pd.Series, lookup: pd.Series) -> npt.NDArray[np.bool_]:
    """Membership through Arrow: pandas' str-dtype isin converts `lookup` one value at a time."""
    return _as_numpy(pc.is_in(_arrow(values), value_set=_arrow(lookup.drop_duplicates())))


def _arrow(values: pd.Series) -> pa.Array | pa.ChunkedArray:
    return pa.array(values).cast(pa.large_string())


def _as_numpy(mask: pa.Array | pa.ChunkedArray) -> npt.NDArray[np.bool_]:
    return np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)


def _without_float_noise(values: pd.Series) -> pd.Series:
    """Whole-number floats (ints read through a column holding NaN) as Int64, so '20' not '20.0'."""
    if not pd.api.types.is_float_dtype(values):
        return values
    present = values.dropna()
    if len(present) and bool(np.all(np.isfinite(present) & (present == np.floor(present)))):
        return values.astype("Int64")
    return values


def _as_ids(values: pd.Series, column: str, label: str) -> pd.Series:
    """Ids as non-empty strings."""
    ids = _without_float_noise(values)
    null = ids.isna().to_numpy()
    if null.any():
        ids = ids.astype(object).where(~null, "")
    ids = ids.astype(str)
    missing = null | (ids.str.strip() == "").to_numpy()
    if missing.any():
        raise DataError(
            f"{label} column {column!r} has {int(missing.sum())} missing or empty id(s), "
            f"expected a non-empty id on every row: {_examples(values, missing)}"
        )
    return ids


def _as_ratings(values: pd.Series, label: str) -> pd.Series:
    numeric = pd.to_numeric(values, errors="coerce").astype("float64")
    bad = ~np.isfinite(numeric.to_numpy())
    if bad.any():
        raise DataError(
            f"{label} column {RATING!r} has {int(bad.sum())} non-numeric or missing value(s), "
            f"expected finite numbers > 0: {_examples(values, bad)}"
        )
    non_positive = (numeric <= 0).to_numpy()
    if non_positive.any():
        raise DataError(
            f"{label} column {RATING!r} has {int(non_positive.sum())} non-positive value(s), "
            f"expected ratings or implicit weights > 0: {_examples(values, non_positive)}"
        )
    return numeric.astype("float32")


def _as_timestamps(values: pd.Series, label: str) -> pd.Series:
    """Unix seconds as int64; datetime columns are converted, fractional seconds are rejected."""
    if pd.api.types.is_datetime64_any_dtype(values):
        if values.dt.tz is not None:
            values = values.dt.tz_convert("UTC").dt.tz_localize(None)
        values = (values - pd.Timestamp(0)) // pd.Timedelta(seconds=1)
    numeric = pd.to_numeric(values, errors="coerce").astype("float64")
    bad = ~np.isfinite(numeric.to_numpy()) | (numeric.abs() >= 2.0**62).to_numpy()
    if bad.any():
        raise DataError(
            f"{label} column {TIMESTAMP!r} has {int(bad.sum())} non-numeric or missing value(s), "
            f"expected integer unix seconds: {_examples(values, bad)}"
        )
    fractional = (numeric != np.floor(numeric)).to_numpy()
    if fractional.any():
        raise DataError(
            f"{label} column {TIMESTAMP!r} has {int(fractional.sum())} fractional value(s), "
            f"expected whole unix seconds: {_examples(values, fractional)}"
        )
    return numeric.astype("int64")


def _clean_interactions(frame: pd.DataFrame, label: str, counts: dict[str, int]) -> pd.DataFrame:
    _require_columns(frame, INTERACTION_COLUMNS, label)
    if frame.empty:
        raise DataError(f"{label} has no rows, expected at least one interaction")
    extra = [c for c in frame.columns if c not in INTERACTION_COLUMNS]
    out = frame.loc[:, [*INTERACTION_COLUMNS, *extra]].reset_index(drop=True)
    out[USER_ID] = _as_ids(out[USER_ID], USER_ID, label)
    out[ITEM_ID] = _as_ids(out[ITEM_ID], ITEM_ID, label)
    out[RATING] = _as_ratings(out[RATING], label)
    out[TIMESTAMP] = _as_timestamps(out[TIMESTAMP], label)
    return _drop_duplicate_events(out, label, counts)


def _drop_duplicate_events(frame: pd.DataFrame, label: str, counts: dict[str, int]) -> pd.DataFrame:
    before = len(frame)
    frame = frame.drop_duplicates(keep="first")
    _record(counts, "exact_duplicates_dropped", before - len(frame),
            f"{label}: dropped exact duplicate rows")
    before = len(frame)
    frame = frame.drop_duplicates([USER_ID, ITEM_ID, TIMESTAMP], keep="last")
    _record(counts, "duplicate_events_dropped", before - len(frame),
            f"{label}: dropped earlier rows of duplicate (user, item, timestamp), kept the last")
    return frame.reset_index(drop=True)


def _clean_items(
    frame: pd.DataFrame, interactions: pd.DataFrame, label: str, counts: dict[str, int]
) -> pd.DataFrame:
    _require_columns(frame, (ITEM_ID,), label)
    extra = [c for c in frame.columns if c not in ITEM_COLUMNS]
    out = frame.reset_index(drop=True).copy()
    out[ITEM_ID] = _as_ids(out[ITEM_ID], ITEM_ID, label)
    for column, kind in ((TITLE, "missing_titles_filled"), (GENRES, "missing_genres_filled"),
                         (DESCRIPTION, "missing_descriptions_filled")):
        out[column] = _filled_text(out, column, label, kind, counts)
    out[GENRES] = _normalised_genres(out[GENRES], label, counts)
    out = out.loc[:, [*ITEM_COLUMNS, *extra]]
    before = len(out)
    out = out.drop_duplicates(ITEM_ID, keep="last")
    _record(counts, "duplicate_item_rows_dropped", before - len(out),
            f"{label}: dropped earlier rows of duplicate item ids, kept the last")
    return _reconcile_items(out, interactions, label, counts)


def _filled_text(
    frame: pd.DataFrame, column: str, label: str, kind: str, counts: dict[str, int]
) -> pd.Series:
    if column not in frame.columns:
        _record(counts, kind, len(frame), f"{label}: no {column!r} column, filled with ''")
        return pd.Series("", index=frame.index, dtype=str)
    missing = frame[column].isna()
    _record(counts, kind, int(missing.sum()), f"{label}: filled missing {column!r} with ''")
    return frame[column].where(~missing, "").astype(str)


def _normalised_genres(genres: pd.Series, label: str, counts: dict[str, int]) -> pd.Series:
    """'|'-separated, each name stripped, no empty names; only rows that need it are rewritten."""
    messy = _as_numpy(pc.match_substring_regex(_arrow(genres), _NEEDS_GENRE_CLEANUP))
    if not messy.any():
        return genres
    cleaned = genres[messy].map(
        lambda v: GENRE_SEPARATOR.join(g.strip() for g in v.split(GENRE_SEPARATOR) if g.strip())
    )
    changed = int((cleaned != genres[messy]).sum())
    _record(counts, "genres_normalised", changed, f"{label}: normalised genre strings")
    out = genres.copy()
    out.loc[cleaned.index] = cleaned
    return out


def _reconcile_items(
    items: pd.DataFrame, interactions: pd.DataFrame, label: str, counts: dict[str, int]
) -> pd.DataFrame:
    """Add a row for every interacted item without metadata; keep (and count) cold items."""
    used = pd.Series(pd.unique(interactions[ITEM_ID]), dtype=str)
    unknown = used[~_isin(used, items[ITEM_ID])].to_numpy(dtype=object)
    _record(counts, "items_without_metadata_added", len(unknown),
            f"{label}: created rows (title = item id, no genres) for interacted items without one")
    cold = int((~_isin(items[ITEM_ID], used)).sum())
    _record(counts, "cold_items_kept", cold, f"{label}: kept cold-start items with no interactions")
    if len(unknown) == 0:
        return items.reset_index(drop=True)
    created = pd.DataFrame({ITEM_ID: unknown, TITLE: unknown, GENRES: "", DESCRIPTION: ""})
    return pd.concat([items, created.astype(str)], ignore_index=True)


def _clean_users(
    frame: pd.DataFrame, interactions: pd.DataFrame, label: str, counts: dict[str, int]
) -> pd.DataFrame:
    _require_columns(frame, (USER_ID,), label)
    out = frame.reset_index(drop=True).copy()
    out[USER_ID] = _as_ids(out[USER_ID], USER_ID, label)
    attributes = [c for c in out.columns if c != USER_ID]
    out = out.loc[:, [USER_ID, *attributes]]
    missing = int(out[attributes].isna().to_numpy().sum()) if attributes else 0
    _record(counts, "missing_user_attributes_filled", missing,
            f"{label}: filled missing attribute values with ''")
    for column in attributes:
        values = _without_float_noise(out[column])
        out[column] = values.astype(object).where(values.notna(), "").astype(str)
    before = len(out)
    out = out.drop_duplicates(USER_ID, keep="last")
    _record(counts, "duplicate_user_rows_dropped", before - len(out),
            f"{label}: dropped earlier rows of duplicate user ids, kept the last")
    known = _isin(out[USER_ID], interactions[USER_ID])
    _record(counts, "unknown_user_rows_dropped", int((~known).sum()),
            f"{label}: dropped attribute rows of users with no interactions")
    return out[known].reset_index(drop=True)
