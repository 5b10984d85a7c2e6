"""The generic dataset format and its validation.

A dataset is a folder holding:
  interactions.csv  user_id,item_id,timestamp[,rating]   (timestamp: epoch seconds or ISO 8601)
  items.csv         item_id + feature columns
  users.csv         user_id + attributes                  (optional)
  dataset.toml      which item columns are text / categorical / numerical, which user columns are
                    sensitive (see `DatasetSpec`)

`Tables` is that content as rows of strings; `build_dataset` validates it and produces the arrays
of `models.data.RecDataset`, naming file, row and column in every error.
"""

from __future__ import annotations

import csv
import math
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from models.data import CategoricalField, Interactions, RecDataset, UserAttribute

INTERACTIONS, ITEMS, USERS, SPEC = "interactions.csv", "items.csv", "users.csv", "dataset.toml"


class DatasetError(ValueError):
    """A problem in a dataset file, located as precisely as we can (row 1 is the header)."""

    def __init__(self, file: str, reason: str, row: int | None = None, column: str | None = None) -> None:
        where = file + (f" row {row}" if row is not None else "") + (f" column '{column}'" if column else "")
        super().__init__(f"{where}: {reason}")
        self.file, self.row, self.column, self.reason = file, row, column, reason


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    text: tuple[str, ...] = ()
    categorical: dict[str, str] = field(default_factory=dict)  # column -> multi-value separator ("" = one)
    numerical: tuple[str, ...] = ()
    user_categorical: tuple[str, ...] = ()
    sensitive: tuple[str, ...] = ()

    def to_toml(self) -> str:
        def arr(xs: tuple[str, ...]) -> str:
            return "[" + ", ".join(f'"{x}"' for x in xs) + "]"

        cats = "\n".join(f'{k} = "{v}"' for k, v in self.categorical.items())
        return (
            f'name = "{self.name}"\n\n[items]\ntext = {arr(self.text)}\nnumerical = {arr(self.numerical)}\n\n'
            f'[items.categorical]  # column = multi-value separator ("" for single-valued)\n{cats}\n\n'
            f"[users]\ncategorical = {arr(self.user_categorical)}\nsensitive = {arr(self.sensitive)}\n"
        )

    @classmethod
    def from_toml(cls, text: str, default_name: str) -> DatasetSpec:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise DatasetError(SPEC, f"not valid TOML: {e}") from e
        items, users = raw.get("items", {}), raw.get("users", {})
        return cls(
            name=str(raw.get("name", default_name)),
            text=tuple(items.get("text", ())),
            categorical={str(k): str(v) for k, v in items.get("categorical", {}).items()},
            numerical=tuple(items.get("numerical", ())),
            user_categorical=tuple(users.get("categorical", ())),
            sensitive=tuple(users.get("sensitive", ())),
        )


Rows = list[list[str]]  # header first


@dataclass(frozen=True)
class Tables:
    spec: DatasetSpec
    interactions: Rows
    items: Rows
    users: Rows | None = None

    def write(self, dst: Path) -> None:
        dst.mkdir(parents=True, exist_ok=True)
        files = {INTERACTIONS: self.interactions, ITEMS: self.items, USERS: self.users}
        for name, rows in files.items():
            if rows is not None:
                with open(dst / name, "w", newline="", encoding="utf-8") as f:
                    csv.writer(f).writerows(rows)
        (dst / SPEC).write_text(self.spec.to_toml(), encoding="utf-8")

    @classmethod
    def read(cls, src: Path) -> Tables:
        for required in (INTERACTIONS, ITEMS, SPEC):
            if not (src / required).is_file():
                raise DatasetError(required, f"missing from {src}")
        spec = DatasetSpec.from_toml((src / SPEC).read_text(encoding="utf-8"), src.name)
        users = _read_csv(src / USERS) if (src / USERS).is_file() else None
        return cls(spec, _read_csv(src / INTERACTIONS), _read_csv(src / ITEMS), users)


def _read_csv(path: Path) -> Rows:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise DatasetError(path.name, "empty file, expected a header row")
    return rows


def _columns(file: str, rows: Rows, required: tuple[str, ...], wanted: tuple[str, ...]) -> dict[str, int]:
    header = [h.strip() for h in rows[0]]
    for col in required:
        if col not in header:
            raise DatasetError(file, f"required column missing (header is {header})", row=1, column=col)
    for col in wanted:
        if col not in header:
            raise DatasetError(SPEC, f"names a column that {file} does not have (header is {header})", column=col)
    for r, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DatasetError(file, f"has {len(row)} fields, the header has {len(header)}", row=r)
    return {h: i for i, h in enumerate(header)}


def _parse_timestamp(value: str, row: int) -> int:
    try:
        return int(float(value))
    except (ValueError, OverflowError):
        pass
    try:
        return int(datetime.fromisoformat(value).timestamp())
    except ValueError as e:
        raise DatasetError(
            INTERACTIONS, f"bad timestamp {value!r} (epoch seconds or ISO 8601)", row, "timestamp"
        ) from e


def _index_ids(file: str, rows: Rows, col: int, id_name: str) -> dict[str, int]:
    ids: dict[str, int] = {}
    for r, row in enumerate(rows[1:], start=2):
        key = row[col].strip()
        if not key:
            raise DatasetError(file, "empty id", r, id_name)
        if key in ids:
            raise DatasetError(file, f"duplicate id {key!r} (first seen in row {ids[key] + 2})", r, id_name)
        ids[key] = len(ids)
    return ids


def build_dataset(t: Tables) -> RecDataset:
    """Validate the tables and turn them into a RecDataset with dense ids."""
    spec = t.spec
    icol = _columns(ITEMS, t.items, ("item_id",), (*spec.text, *spec.categorical, *spec.numerical))
    item_index = _index_ids(ITEMS, t.items, icol["item_id"], "item_id")
    inter, user_index = _interactions(t.interactions, item_index)
    item_rows = t.items[1:]
    text = {c: tuple(r[icol[c]] for r in item_rows) for c in spec.text}
    cats = {c: _categorical(item_rows, icol[c], sep) for c, sep in spec.categorical.items()}
    nums = {c: _numerical(item_rows, icol[c], c) for c in spec.numerical}
    attrs = _user_attributes(t.users, spec, user_index) if t.users is not None else {}
    if spec.sensitive and t.users is None:
        raise DatasetError(SPEC, f"names sensitive columns {list(spec.sensitive)} but there is no {USERS}")
    return RecDataset(spec.name, tuple(user_index), tuple(item_index), inter, text, cats, nums, attrs, spec.sensitive)


def _interactions(rows: Rows, item_index: dict[str, int]) -> tuple[Interactions, dict[str, int]]:
    col = _columns(INTERACTIONS, rows, ("user_id", "item_id", "timestamp"), ())
    has_rating = "rating" in col
    user_index: dict[str, int] = {}
    n = len(rows) - 1
    users, items, ts = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
    ratings = np.empty(n, np.float32)
    for k, row in enumerate(rows[1:]):
        r = k + 2
        item = item_index.get(row[col["item_id"]].strip())
        if item is None:
            raise DatasetError(INTERACTIONS, f"item {row[col['item_id']]!r} is not in {ITEMS}", r, "item_id")
        users[k] = user_index.setdefault(row[col["user_id"]].strip(), len(user_index))
        items[k], ts[k] = item, _parse_timestamp(row[col["timestamp"]].strip(), r)
        if has_rating:
            ratings[k] = _float(INTERACTIONS, row[col["rating"]], r, "rating", allow_empty=False)
    order = np.lexsort((np.arange(n), ts, users))  # stable: ties keep file order
    inter = Interactions(users[order], items[order], ts[order], ratings[order] if has_rating else None)
    return inter, user_index


def _float(file: str, value: str, row: int, column: str, allow_empty: bool) -> float:
    if not value.strip() and allow_empty:
        return math.nan
    try:
        x = float(value)
    except ValueError as e:
        raise DatasetError(file, f"{value!r} is not a number", row, column) from e
    if math.isinf(x):
        raise DatasetError(file, f"{value!r} is not finite", row, column)
    return x


def _numerical(rows: Rows, col: int, name: str) -> np.ndarray:
    return np.array([_float(ITEMS, r[col], i + 2, name, allow_empty=True) for i, r in enumerate(rows)], np.float32)


def _categorical(rows: Rows, col: int, sep: str) -> CategoricalField:
    vocab: dict[str, int] = {}
    indptr, indices = [0], []
    for r in rows:
        values = r[col].split(sep) if sep else [r[col]]
        codes = {vocab.setdefault(v.strip(), len(vocab)) for v in values if v.strip()}
        indices.extend(sorted(codes))
        indptr.append(len(indices))
    return CategoricalField(tuple(vocab), np.array(indptr, np.int64), np.array(indices, np.int64))


def _user_attributes(rows: Rows, spec: DatasetSpec, user_index: dict[str, int]) -> dict[str, UserAttribute]:
    names = tuple(dict.fromkeys((*spec.user_categorical, *spec.sensitive)))
    col = _columns(USERS, rows, ("user_id",), names)
    _index_ids(USERS, rows, col["user_id"], "user_id")  # duplicate check
    out = {}
    for name in names:
        vocab: dict[str, int] = {}
        codes = np.full(len(user_index), -1, np.int64)  # users absent from users.csv: unknown
        for r in rows[1:]:
            u = user_index.get(r[col["user_id"]].strip())
            if u is not None and r[col[name]].strip():
                codes[u] = vocab.setdefault(r[col[name]].strip(), len(vocab))
        out[name] = UserAttribute(tuple(vocab), codes)
    return out
