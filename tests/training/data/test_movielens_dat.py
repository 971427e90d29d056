"""MovieLens 1M and 10M ('::'-separated .dat files): the 100K release rewritten in that layout
loads as the same data, and small hand-written files cover the edge cases."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.errors import DataError
from training.data import leave_last_out, load_dataset
from training.data.movielens import load_movielens_100k, load_movielens_dat

AGE_CODES = np.array([1, 18, 25, 35, 45, 50, 56])  # users.dat's ages: each bucket's lower bound


def _write_as_1m(source: Path, root: Path) -> None:
    """The 100K release at `source` written as MovieLens 1M lays its files out."""
    root.mkdir()
    ratings = pd.read_csv(source / "u.data", sep="\t", header=None, dtype=str)
    (root / "ratings.dat").write_text(
        "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ratings.itertuples(index=False)))
    items = load_movielens_100k(source).items
    (root / "movies.dat").write_bytes("".join(
        f"{i}::{title}::{genres}\n" for i, title, genres in
        items[["item_id", "title", "genres"]].itertuples(index=False)).encode("latin-1"))
    users = pd.read_csv(source / "u.user", sep="|", header=None, dtype=str)
    codes = AGE_CODES[np.searchsorted(AGE_CODES, users[1].astype(int), side="right") - 1]
    (root / "users.dat").write_text("".join(
        f"{u}::{gender}::{code}::{occupation}::{zipcode}\n" for (u, _, gender, occupation, zipcode),
        code in zip(users.itertuples(index=False), codes)))


def test_the_100k_release_in_the_1m_layout_is_the_same_data(ml100k_path: Path,
                                                             tmp_path: Path) -> None:
    if not (ml100k_path / "u.user").is_file():
        pytest.skip("this copy of MovieLens 100K has no u.user")
    root = tmp_path / "ml-1m"
    _write_as_1m(ml100k_path, root)
    original = load_movielens_100k(ml100k_path)
    rewritten = load_dataset(root)  # found by its files, as RECSYS_DATA_PATH would be
    assert rewritten.name == "ml-1m"
    pd.testing.assert_frame_equal(rewritten.interactions, original.interactions)
    pd.testing.assert_frame_equal(rewritten.items, original.items)
    assert rewritten.users is not None and original.users is not None
    pd.testing.assert_frame_equal(rewritten.users, original.users)  # names kept: not codes
    assert (leave_last_out(rewritten.interactions).test.equals(
        leave_last_out(original.interactions).test))


def _write_small_dat(root: Path, *, users: bool = True) -> None:
    root.mkdir()
    (root / "ratings.dat").write_text("1::10::4::100\n1::20::2.5::200\n2::10::5::150\n")
    (root / "movies.dat").write_bytes(
        "10::Caf\xe9: The Story (1990)::Action|Drama\n20::NA::(no genres listed)\n"
        "30::Cold One (2000)::Comedy\n".encode("latin-1"))
    if users:
        (root / "users.dat").write_text("1::F::1::12::12345\n2::M::56::99::54321\n")


def test_small_files(tmp_path: Path) -> None:
    root = tmp_path / "ml-10m"
    _write_small_dat(root)
    dataset = load_movielens_dat(root)
    assert dataset.name == "ml-10m"
    assert dataset.interactions["rating"].tolist() == [4.0, 2.5, 5.0]  # 10M's half stars
    assert dataset.interactions["timestamp"].tolist() == [100, 200, 150]
    items = dataset.items.set_index("item_id")
    assert items.loc["10", "title"] == "Café: The Story (1990)"  # Latin-1, a single colon kept
    assert items.loc["10", "genres"] == "Action|Drama"
    assert items.loc["20", "title"] == "NA"  # a title, not a missing value
    assert items.loc["20", "genres"] == ""
    assert "30" in items.index  # a cold item: kept
    assert dataset.users is not None
    users = dataset.users.set_index("user_id")
    assert users.loc["1"].tolist() == ["<18", "F", "programmer"]  # age and occupation codes
    assert users.loc["2"].tolist() == ["56+", "M", "99"]  # an unknown code kept as it is


def test_utf8_titles(tmp_path: Path) -> None:
    root = tmp_path / "ml-10m"
    _write_small_dat(root, users=False)
    (root / "movies.dat").write_text("10::Amélie (2001)::Comedy\n20::Ōkami (2000)::Drama\n",
                                     encoding="utf-8")
    dataset = load_dataset(root)
    assert dataset.users is None  # 10M has no users.dat
    assert dataset.items.set_index("item_id")["title"].tolist() == ["Amélie (2001)",
                                                                     "Ōkami (2000)"]


def test_a_malformed_rating_line_is_named(tmp_path: Path) -> None:
    root = tmp_path / "ml-1m"
    _write_small_dat(root)
    (root / "ratings.dat").write_text("1::10::4::100\n1:20:2:200\n")
    with pytest.raises(DataError, match=r"ratings.dat row 1 is not UserID::MovieID::Rating"):
        load_movielens_dat(root)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    root = tmp_path / "ml-1m"
    _write_small_dat(root)
    (root / "movies.dat").unlink()
    with pytest.raises(DataError, match=r"has no movies.dat; expected .*ml-1m/movies.dat"):
        load_movielens_dat(root)
    with pytest.raises(DataError, match=r"ratings.dat \+ movies.dat \(MovieLens 1M, 10M\)"):
        load_dataset(root)
