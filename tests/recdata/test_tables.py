"""The generic format: round trip and one clear error per kind of problem."""

from pathlib import Path

import numpy as np
import pytest

from recdata import DatasetError, load_dataset
from recdata.tables import DatasetSpec, Tables

SPEC = DatasetSpec("tiny", text=("title",), categorical={"genres": "|"}, numerical=("year",), sensitive=("gender",))


def tiny_tables() -> Tables:
    return Tables(
        SPEC,
        [["user_id", "item_id", "timestamp", "rating"], ["u1", "a", "20", "4"], ["u1", "b", "10", "5"],
         ["u2", "a", "2024-01-02T00:00:00+00:00", "3"]],
        [["item_id", "title", "genres", "year"], ["a", "Alpha", "x|y", "1999"], ["b", "Beta", "y", ""],
         ["c", "Gamma", "", "2001"]],
        [["user_id", "gender"], ["u1", "F"], ["u2", "M"]],
    )  # fmt: skip


def test_round_trip(tmp_path: Path) -> None:
    tiny_tables().write(tmp_path)
    d = load_dataset(tmp_path)
    assert d.item_ids == ("a", "b", "c")
    assert d.user_ids == ("u1", "u2")
    # sorted by user then time: u1's b (t=10) comes before a (t=20)
    assert d.interactions.item.tolist() == [1, 0, 0]
    assert d.interactions.timestamp[2] == 1704153600
    assert d.item_categorical["genres"].values_of(0) == ["x", "y"]
    assert d.item_categorical["genres"].values_of(2) == []
    assert np.isnan(d.item_numerical["year"][1])
    assert d.user_attributes["gender"].vocab == ("F", "M")
    assert d.sensitive == ("gender",)
    assert d.fingerprint() == load_dataset(tmp_path).fingerprint()


def _write_with(tmp_path: Path, file: str, rows: list[list[str]]) -> Path:
    tiny_tables().write(tmp_path)
    import csv

    with open(tmp_path / file, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return tmp_path


def test_missing_file(tmp_path: Path) -> None:
    tiny_tables().write(tmp_path)
    (tmp_path / "items.csv").unlink()
    with pytest.raises(DatasetError, match=r"items.csv: missing"):
        load_dataset(tmp_path)


def test_duplicate_item_id_names_row(tmp_path: Path) -> None:
    rows = [["item_id", "title", "genres", "year"], ["a", "A", "", ""], ["b", "B", "", ""], ["a", "A2", "", ""]]
    with pytest.raises(
        DatasetError, match=r"items.csv row 4 column 'item_id': duplicate id 'a' \(first seen in row 2\)"
    ):
        load_dataset(_write_with(tmp_path, "items.csv", rows))


def test_bad_timestamp_names_row_and_column(tmp_path: Path) -> None:
    rows = [["user_id", "item_id", "timestamp"], ["u1", "a", "10"], ["u1", "b", "yesterday"]]
    with pytest.raises(DatasetError, match=r"interactions.csv row 3 column 'timestamp': bad timestamp 'yesterday'"):
        load_dataset(_write_with(tmp_path, "interactions.csv", rows))


def test_unknown_item_in_interactions(tmp_path: Path) -> None:
    rows = [["user_id", "item_id", "timestamp"], ["u1", "zzz", "10"]]
    with pytest.raises(DatasetError, match=r"interactions.csv row 2 column 'item_id': item 'zzz' is not in items.csv"):
        load_dataset(_write_with(tmp_path, "interactions.csv", rows))


def test_spec_naming_unknown_column(tmp_path: Path) -> None:
    tiny_tables().write(tmp_path)
    spec = (tmp_path / "dataset.toml").read_text().replace('text = ["title"]', 'text = ["title", "plot"]')
    (tmp_path / "dataset.toml").write_text(spec)
    with pytest.raises(DatasetError, match=r"dataset.toml column 'plot': names a column that items.csv does not have"):
        load_dataset(tmp_path)


def test_missing_required_column_and_ragged_row(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"interactions.csv row 1 column 'timestamp': required column missing"):
        load_dataset(_write_with(tmp_path, "interactions.csv", [["user_id", "item_id"], ["u1", "a"]]))
    rows = [["user_id", "item_id", "timestamp"], ["u1", "a", "10", "extra"]]
    with pytest.raises(DatasetError, match=r"interactions.csv row 2: has 4 fields, the header has 3"):
        load_dataset(_write_with(tmp_path, "interactions.csv", rows))


def test_non_numeric_feature(tmp_path: Path) -> None:
    rows = [["item_id", "title", "genres", "year"], ["a", "A", "", "199x"], ["b", "B", "", ""], ["c", "C", "", ""]]
    with pytest.raises(DatasetError, match=r"items.csv row 2 column 'year': '199x' is not a number"):
        load_dataset(_write_with(tmp_path, "items.csv", rows))


def test_unknown_dataset_name() -> None:
    with pytest.raises(DatasetError, match="no such dataset folder"):
        load_dataset("ml-does-not-exist")
