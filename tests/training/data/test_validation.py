"""validate(): schema dtypes, hard errors that name the bad values, counted and logged repairs."""
from __future__ import annotations

import logging

import pandas as pd
import pytest

from recsys.errors import DataError
from training.data import Dataset, RepairReport, validate


def _interactions(**overrides: list[object]) -> pd.DataFrame:
    frame = pd.DataFrame({
        "user_id": [1, 1, 2, 2, 3],
        "item_id": ["a", "b", "a", "c", "b"],
        "rating": [4, 5, 3, 2, 1],
        "timestamp": [10, 20, 10, 30, 40],
    })
    return frame.assign(**overrides)


def _items() -> pd.DataFrame:
    return pd.DataFrame({
        "item_id": ["a", "b", "c"],
        "title": ["Alpha", "Beta", "Gamma"],
        "genres": ["Action", "Comedy|Drama", ""],
        "description": ["", "", ""],
    })


def _validate(interactions: pd.DataFrame, items: pd.DataFrame | None = None,
              users: pd.DataFrame | None = None) -> tuple[Dataset, RepairReport]:
    return validate(Dataset("t", interactions, _items() if items is None else items, users))


def test_clean_data_gets_schema_dtypes_and_no_repairs() -> None:
    dataset, report = _validate(_interactions())
    frame = dataset.interactions
    assert frame["user_id"].tolist() == ["1", "1", "2", "2", "3"]
    assert pd.api.types.is_string_dtype(frame["user_id"])
    assert pd.api.types.is_string_dtype(frame["item_id"])
    assert frame["rating"].dtype == "float32"
    assert frame["timestamp"].dtype == "int64"
    assert list(dataset.items.columns) == ["item_id", "title", "genres", "description"]
    assert report.total_repairs == 0
    assert set(report.as_dict().values()) == {0}


def test_report_as_dict_is_flat_ints_for_mlflow() -> None:
    report = RepairReport(exact_duplicates_dropped=2, cold_items_kept=3)
    values = report.as_dict()
    assert values["exact_duplicates_dropped"] == 2 and values["cold_items_kept"] == 3
    assert all(isinstance(v, int) for v in values.values())
    assert report.total_repairs == 2  # cold items are kept, not repaired


def test_missing_required_column_is_named() -> None:
    expected = r"interactions is missing required column\(s\) \['rating'\]"
    with pytest.raises(DataError, match=expected):
        _validate(_interactions().drop(columns="rating"))


def test_missing_item_id_column_in_items_is_named() -> None:
    with pytest.raises(DataError, match=r"items is missing required column\(s\) \['item_id'\]"):
        _validate(_interactions(), items=_items().rename(columns={"item_id": "id"}))


def test_empty_interactions_rejected() -> None:
    with pytest.raises(DataError, match="interactions has no rows"):
        _validate(_interactions().iloc[:0])


def test_non_numeric_ratings_name_rows_and_values() -> None:
    bad = _interactions(rating=["4", "five", 3, None, 1])
    with pytest.raises(DataError, match="2 non-numeric or missing") as caught:
        _validate(bad)
    assert "column 'rating'" in str(caught.value)
    assert "row 1 'five'" in str(caught.value) and "row 3 None" in str(caught.value)


def test_only_five_offending_rows_are_listed() -> None:
    bad = pd.DataFrame({"user_id": ["u"] * 8, "item_id": list("abcdefgh"),
                        "rating": ["x"] * 8, "timestamp": range(8)})
    with pytest.raises(DataError, match=r"row 4 'x' \(and 3 more\)") as caught:
        _validate(bad)
    assert "row 5" not in str(caught.value)


def test_non_positive_ratings_rejected() -> None:
    with pytest.raises(DataError, match=r"2 non-positive value\(s\).*row 1 0.*row 4 -1"):
        _validate(_interactions(rating=[4, 0, 3, 2, -1]))


def test_non_numeric_timestamps_rejected() -> None:
    with pytest.raises(DataError, match=r"column 'timestamp'.*non-numeric.*row 2 'yesterday'"):
        _validate(_interactions(timestamp=[10, 20, "yesterday", 30, 40]))


def test_fractional_timestamps_rejected() -> None:
    with pytest.raises(DataError, match=r"fractional.*expected whole unix seconds: row 0 10.5"):
        _validate(_interactions(timestamp=[10.5, 20, 10, 30, 40]))


def test_datetime_timestamps_become_unix_seconds() -> None:
    stamps = pd.to_datetime([10, 20, 10, 30, 40], unit="s", utc=True)
    dataset, _ = _validate(_interactions(timestamp=stamps))
    assert dataset.interactions["timestamp"].tolist() == [10, 20, 10, 30, 40]


def test_missing_and_empty_ids_rejected() -> None:
    with pytest.raises(DataError, match=r"column 'item_id' has 2 missing or empty.*row 1 ''"):
        _validate(_interactions(item_id=["a", "", "a", None, "b"]))


def test_whole_float_ids_lose_the_decimal_point() -> None:
    dataset, _ = _validate(_interactions(user_id=[1.0, 1.0, 2.0, 2.0, 3.0]))
    assert dataset.interactions["user_id"].tolist() == ["1", "1", "2", "2", "3"]


def test_duplicates_dropped_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    frame = pd.DataFrame({
        "user_id": ["u", "u", "u", "u"],
        "item_id": ["a", "a", "b", "b"],
        "rating": [4, 4, 1, 5],
        "timestamp": [1, 1, 2, 2],
    })
    with caplog.at_level(logging.WARNING, logger="training.data.validation"):
        dataset, report = _validate(frame)
    assert report.exact_duplicates_dropped == 1
    assert report.duplicate_events_dropped == 1
    assert dataset.interactions["rating"].tolist() == [4.0, 5.0]  # the last of (u, b, 2) kept
    assert "dropped exact duplicate rows: 1" in caplog.text


def test_items_without_metadata_get_a_row_titled_by_id() -> None:
    dataset, report = _validate(_interactions(item_id=["a", "b", "a", "new", "b"]))
    row = dataset.items.set_index("item_id").loc["new"]
    assert (row["title"], row["genres"]) == ("new", "")
    assert report.items_without_metadata_added == 1


def test_cold_items_are_kept_and_counted() -> None:
    items = pd.concat([_items(), pd.DataFrame({"item_id": ["cold"], "title": ["Cold"],
                                               "genres": ["War"], "description": [""]})])
    dataset, report = _validate(_interactions(), items=items)
    assert "cold" in set(dataset.items["item_id"])
    assert report.cold_items_kept == 1
    assert report.total_repairs == 0


def test_missing_titles_genres_filled_and_genres_normalised() -> None:
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["Alpha", None, "Gamma"],
                          "genres": [" Action | |Comedy|", None, "Drama"]})
    dataset, report = _validate(_interactions(), items=items)
    by_id = dataset.items.set_index("item_id")
    assert by_id.loc["a", "genres"] == "Action|Comedy"
    assert (by_id.loc["b", "title"], by_id.loc["b", "genres"]) == ("", "")
    assert by_id["description"].tolist() == ["", "", ""]
    assert report.missing_titles_filled == 1
    assert report.missing_genres_filled == 1
    assert report.missing_descriptions_filled == 3  # no description column at all
    assert report.genres_normalised == 1


def test_duplicate_item_rows_keep_the_last() -> None:
    items = pd.concat([_items(), _items().iloc[[0]].assign(title="Alpha 2")])
    dataset, report = _validate(_interactions(), items=items)
    assert dataset.items.set_index("item_id").loc["a", "title"] == "Alpha 2"
    assert report.duplicate_item_rows_dropped == 1


def test_user_rows_of_unknown_users_dropped_and_attributes_text() -> None:
    users = pd.DataFrame({"user_id": [1, 2, 99], "age": [20, None, 30], "gender": ["M", "F", "F"]})
    dataset, report = _validate(_interactions(), users=users)
    assert dataset.users is not None
    assert dataset.users["user_id"].tolist() == ["1", "2"]
    assert dataset.users["age"].tolist() == ["20", ""]
    assert dataset.user_attribute_columns == ("age", "gender")
    assert report.unknown_user_rows_dropped == 1
    assert report.missing_user_attributes_filled == 1


def test_sources_name_the_file_in_errors() -> None:
    dataset = Dataset("t", _interactions(rating=[1, 2, 3, 4, -5]), _items())
    with pytest.raises(DataError, match=r"interactions \(/data/ratings.csv\) column 'rating'"):
        validate(dataset, sources={"interactions": "/data/ratings.csv"})
