"""Loaders for the GroupLens MovieLens releases: 100K, the '::' layout of 1M and 10M, and the CSV
layout of 'latest', 20M, 25M and 32M."""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.errors import DataError
from training.data.schema import (
    DESCRIPTION,
    GENRE_SEPARATOR,
    GENRES,
    ITEM_ID,
    RATING,
    TIMESTAMP,
    TITLE,
    USER_ID,
    Dataset,
)
from training.data.validation import validate

logger = logging.getLogger(__name__)

ML100K_REQUIRED = ("u.data", "u.item")
ML_LATEST_REQUIRED = ("ratings.csv", "movies.csv")
ML_DAT_REQUIRED = ("ratings.dat", "movies.dat")  # MovieLens 1M and 10M
# users.dat's occupation codes (MovieLens 1M README)
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)
# The README's fixed genre order, used when u.genre is absent.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)
AGE_EDGES = (0, 18, 25, 35, 45, 50, 56, np.inf)
AGE_BUCKETS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
NO_GENRES = "(no genres listed)"
_ITEM_FIELDS = 5  # id | title | release date | video release date | IMDb URL, then genre flags


def load_movielens_100k(path: str | Path) -> Dataset:
    """MovieLens 100K from the unzipped `ml-100k` directory.

    Needs u.data and u.item; reads genre names from u.genre (else the README's fixed list) and
    user attributes (age_bucket, gender, occupation) from u.user when present.
    """
    root = _checked_directory(path, ML100K_REQUIRED, "MovieLens 100K")
    genre_names = _read_genre_names(root / "u.genre")
    interactions = _read_table(
        root / "u.data", sep="\t", names=[USER_ID, ITEM_ID, RATING, TIMESTAMP],
        dtype={USER_ID: str, ITEM_ID: str},
    )
    items = _read_100k_items(root / "u.item", genre_names)
    users = _read_100k_users(root / "u.user") if (root / "u.user").is_file() else None
    sources = {"interactions": root / "u.data", "items": root / "u.item", "users": root / "u.user"}
    dataset, report = validate(Dataset("ml-100k", interactions, items, users), sources=sources)
    logger.info("loaded MovieLens 100K from %s; repairs: %s", root, report.as_dict())
    return dataset


def load_movielens_latest(path: str | Path) -> Dataset:
    """ml-latest / ml-latest-small (ratings.csv, movies.csv; tags.csv and links.csv are ignored)."""
    root = _checked_directory(path, ML_LATEST_REQUIRED, "MovieLens latest")
    interactions = _read_table(
        root / "ratings.csv",
        sep=",",
        dtype={"userId": str, "movieId": str},
    ).rename(columns={"userId": USER_ID, "movieId": ITEM_ID})
    movies = _read_table(
        root / "movies.csv", sep=",", dtype={"movieId": str, "title": str, "genres": str},
    ).rename(columns={"movieId": ITEM_ID})
    movies[GENRES] = movies[GENRES].replace(NO_GENRES, "")
    movies[DESCRIPTION] = ""
    sources = {"interactions": root / "ratings.csv", "items": root / "movies.csv"}
    dataset, report = validate(Dataset(root.name, interactions, movies), sources=sources)
    logger.info("loaded MovieLens %s from %s; repairs: %s", root.name, root, report.as_dict())
    return dataset


def load_movielens_dat(path: str | Path) -> Dataset:
    """MovieLens 1M or 10M: the '::'-separated ratings.dat and movies.dat, and users.dat when
    present (1M: gender, age bucket, occupation; 10M has none). tags.dat is ignored."""
    root = _checked_directory(path, ML_DAT_REQUIRED, "MovieLens 1M/10M")
    interactions = _read_ratings_dat(root / "ratings.dat")
    movies = _read_dat(root / "movies.dat", [ITEM_ID, TITLE, GENRES])
    movies[GENRES] = movies[GENRES].fillna("").replace(NO_GENRES, "")
    movies[DESCRIPTION] = ""
    users = _read_1m_users(root / "users.dat") if (root / "users.dat").is_file() else None
    sources = {"interactions": root / "ratings.dat", "items": root / "movies.dat",
               "users": root / "users.dat"}
    dataset, report = validate(Dataset(root.name, interactions, movies, users), sources=sources)
    logger.info("loaded MovieLens %s from %s; repairs: %s", root.name, root, report.as_dict())
    return dataset


def _read_ratings_dat(file: Path) -> pd.DataFrame:
    """UserID::MovieID::Rating::Timestamp, read by the C parser split at every ':' (10M has 10
    million lines; the python engine that a two-character separator needs takes minutes)."""
    columns = [USER_ID, "_", ITEM_ID, "__", RATING, "___", TIMESTAMP]
    table = _read_table(file, sep=":", header=None, names=columns, dtype=str,
                        quoting=csv.QUOTE_NONE)
    bad = (table[["_", "__", "___"]].notna().any(axis=1) | table[TIMESTAMP].isna()).to_numpy()
    if bool(bad.any()):
        raise DataError(f"{file} row {int(np.flatnonzero(bad)[0])} is not "
                        "UserID::MovieID::Rating::Timestamp")
    return table[[USER_ID, ITEM_ID, RATING, TIMESTAMP]].copy()


def _read_dat(file: Path, columns: list[str]) -> pd.DataFrame:
    """A small '::'-separated file (titles hold single colons), as text: UTF-8, else Latin-1
    (1M's titles)."""
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    table = _read_table(io.StringIO(text.replace("::", "\t")), label=file, sep="\t",
                        header=None, names=columns, dtype=str, quoting=csv.QUOTE_NONE)
    if table[columns[-1]].isna().all() and len(table):
        raise DataError(f"{file} has fewer than {len(columns)} '::'-separated fields a line; "
                        f"expected {'::'.join(columns)}")
    return table


def _read_1m_users(file: Path) -> pd.DataFrame:
    """UserID::Gender::Age::Occupation::Zip-code; the age is already a bucket's lower bound (1,
    18, 25, ...), the occupation a code (ML1M_OCCUPATIONS; another code is kept as it is)."""
    table = _read_dat(file, [USER_ID, "gender", "age", "occupation", "zip"])
    names = {str(code): name for code, name in enumerate(ML1M_OCCUPATIONS)}
    return pd.DataFrame({
        USER_ID: table[USER_ID],
        "age_bucket": age_buckets(table["age"], file),
        "gender": table["gender"],
        "occupation": table["occupation"].map(names).fillna(table["occupation"]),
    })


def _checked_directory(path: str | Path, required: tuple[str, ...], what: str) -> Path:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"{what} directory {root} does not exist; expected a directory with "
                        f"{', '.join(required)}")
    for name in required:
        if not (root / name).is_file():
            raise DataError(f"{what} directory {root} has no {name}; expected {root / name} "
                            f"(required files: {', '.join(required)})")
    return root


def _read_table(file: Path | io.StringIO, *, label: Path | None = None,
                **options: object) -> pd.DataFrame:
    """read_csv where only empty fields are missing (a title like 'NA' stays a title); `label`
    names the file in errors when `file` is its text."""
    try:
        return pd.read_csv(file, keep_default_na=False, na_values=[""], **options)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise DataError(f"cannot parse {label or file}: {error}") from error


def _read_genre_names(file: Path) -> tuple[str, ...]:
    if not file.is_file():
        logger.info("%s absent; using the README's fixed list of 19 genres", file)
        return ML100K_GENRES
    table = _read_table(file, sep="|", header=None, names=["name", "index"], encoding="latin-1")
    return tuple(table.sort_values("index")["name"].astype(str))


def _read_100k_items(file: Path, genre_names: tuple[str, ...]) -> pd.DataFrame:
    table = _read_table(
        file, sep="|", header=None, encoding="latin-1", quoting=csv.QUOTE_NONE,
        dtype={0: str, 1: str},
    )
    n_flags = table.shape[1] - _ITEM_FIELDS
    if n_flags != len(genre_names):
        raise DataError(f"{file} has {n_flags} genre flag columns, expected {len(genre_names)} "
                        f"(one per genre: {', '.join(genre_names)})")
    flags = table.iloc[:, _ITEM_FIELDS:].fillna(0).to_numpy(dtype=bool)
    return pd.DataFrame({
        ITEM_ID: table[0],
        TITLE: table[1],
        GENRES: _genre_strings(flags, genre_names),
        DESCRIPTION: "",
    })


def _genre_strings(flags: np.ndarray, genre_names: tuple[str, ...]) -> list[str]:
    names = np.asarray(genre_names, dtype=object)
    return [GENRE_SEPARATOR.join(names[row]) for row in flags]


def _read_100k_users(file: Path) -> pd.DataFrame:
    table = _read_table(
        file, sep="|", header=None, encoding="latin-1",
        names=[USER_ID, "age", "gender", "occupation", "zip"],
        dtype={USER_ID: str, "gender": str, "occupation": str, "zip": str},
    )
    return pd.DataFrame({
        USER_ID: table[USER_ID],
        "age_bucket": age_buckets(table["age"], file),
        "gender": table["gender"],
        "occupation": table["occupation"],
    })


def age_buckets(ages: pd.Series, source: Path | str = "ages") -> pd.Series:
    """Ages in years → the MovieLens buckets "<18", "18-24", ..., "56+" (str)."""
    numeric = pd.to_numeric(ages, errors="coerce")
    bad = numeric.isna() | (numeric < 0)
    if bool(bad.any()):
        rows = list(np.flatnonzero(bad.to_numpy())[:5])
        raise DataError(f"{source} has non-numeric or negative ages at rows {rows}, "
                        f"expected ages in years")
    buckets = pd.cut(numeric, bins=list(AGE_EDGES), labels=list(AGE_BUCKETS), right=False)
    return buckets.astype(str)
