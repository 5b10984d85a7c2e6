"""Converters from the MovieLens distributions (Harper & Konstan 2015) to the generic `Tables`.

Formats:
  movielens-latest  ml-latest(-small): ratings.csv, movies.csv, tags.csv (CSV, UTF-8)
  ml-100k           u.data, u.item, u.user (tab / pipe separated, Latin-1)
  ml-1m             ratings.dat, movies.dat, users.dat ('::' separated, Latin-1)
  recbole           RecBole atomic files *.inter, *.item, *.user (tab separated, typed headers)

Items get `title` and (where there are tags) `tags` as text, `genres` as a '|'-separated categorical,
`year` and the rating statistics `rating_mean`, `rating_count` as numerical columns. The statistics
are over the whole log (they are catalogue facts, not a split): models that must not see the test
period recompute them from their training split. Users get `gender`, `age_group` (sensitive) and
`occupation` where the distribution has them.
"""

from __future__ import annotations

import csv
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

from recdata.tables import DatasetError, DatasetSpec, Rows, Tables

_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")
_ML100K_GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]
# ml-1m's own age codes, reused to bucket ml-100k's exact ages into the same groups
_AGE_GROUPS = ((18, "under 18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"), (56, "50-55"))


def age_group(age: int) -> str:
    return next((label for bound, label in _AGE_GROUPS if age < bound), "56+")


def split_title(title: str) -> tuple[str, str]:
    """'Toy Story (1995)' -> ('Toy Story', '1995'); no year -> (title, '')."""
    m = _YEAR.search(title)
    return (title[: m.start()].strip(), m.group(1)) if m else (title.strip(), "")


def _spec(name: str, with_tags: bool, with_users: bool) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        text=("title", "tags") if with_tags else ("title",),
        categorical={"genres": "|"},
        numerical=("year", "rating_mean", "rating_count"),
        user_categorical=("occupation",) if with_users else (),
        sensitive=("gender", "age_group") if with_users else (),
    )


def _item_rows(items: list[tuple[str, str, str, list[str]]], ratings: Rows, tags: dict[str, str] | None) -> Rows:
    """items: (id, title, year, genres) -> rows with rating statistics (and tags) attached."""
    sums: defaultdict[str, float] = defaultdict(float)
    counts: Counter[str] = Counter()
    for _, item, _, rating in ratings[1:]:
        sums[item] += float(rating)
        counts[item] += 1
    header = ["item_id", "title", "year", "genres", "rating_mean", "rating_count"]
    rows: Rows = [[*header, "tags"] if tags is not None else header]
    for item_id, title, year, genres in items:
        n = counts[item_id]
        year = year if year.isdigit() else ""  # e.g. RecBole ml-100k has "unkonwn"
        row = [item_id, title, year, "|".join(genres), f"{sums[item_id] / n:.4f}" if n else "", str(n)]
        rows.append([*row, tags.get(item_id, "")] if tags is not None else row)
    return rows


def _user_rows(users: Iterable[tuple[str, str, str, str]]) -> Rows:
    """users: (id, gender, age_group, occupation)."""
    return [["user_id", "gender", "age_group", "occupation"], *([*u] for u in users)]


def convert_latest(src: Path) -> Tables:
    ratings = _csv(src / "ratings.csv", ("userId", "movieId", "rating", "timestamp"))
    inter: Rows = [["user_id", "item_id", "timestamp", "rating"]]
    inter += [[u, i, t, r] for u, i, r, t in ratings[1:]]
    items = []
    for mid, title, genres in _csv(src / "movies.csv", ("movieId", "title", "genres"))[1:]:
        name, year = split_title(title)
        items.append((mid, name, year, [g for g in genres.split("|") if g != "(no genres listed)"]))
    tags = _tag_text(src / "tags.csv") if (src / "tags.csv").is_file() else {}
    return Tables(_spec(src.name, True, False), inter, _item_rows(items, inter, tags))


def _tag_text(path: Path) -> dict[str, str]:
    """Item -> its distinct tags, most frequent first, '; '-joined."""
    per_item: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for _, mid, tag, _ in _csv(path, ("userId", "movieId", "tag", "timestamp"))[1:]:
        per_item[mid][tag.strip().lower()] += 1
    return {mid: "; ".join(t for t, _ in c.most_common()) for mid, c in per_item.items()}


def convert_ml100k(src: Path) -> Tables:
    inter: Rows = [["user_id", "item_id", "timestamp", "rating"]]
    inter += [[u, i, t, r] for u, i, r, t in _delimited(src / "u.data", "\t", 4)]
    items = []
    for f in _delimited(src / "u.item", "|", 24):
        name, year = split_title(f[1])
        year = year or f[2][-4:]  # the release date ends with the year when the title lacks one
        items.append((f[0], name, year, [g for g, flag in zip(_ML100K_GENRES, f[5:], strict=True) if flag == "1"]))
    users = [(u, g, age_group(int(a)), occ) for u, a, g, occ, _ in _delimited(src / "u.user", "|", 5)]
    return Tables(_spec("ml-100k", False, True), inter, _item_rows(items, inter, None), _user_rows(users))


def convert_ml1m(src: Path) -> Tables:
    inter: Rows = [["user_id", "item_id", "timestamp", "rating"]]
    inter += [[u, i, t, r] for u, i, r, t in _delimited(src / "ratings.dat", "::", 4)]
    items = []
    for mid, title, genres in _delimited(src / "movies.dat", "::", 3):
        name, year = split_title(title)
        items.append((mid, name, year, genres.split("|")))
    codes = {"1": "under 18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49", "50": "50-55", "56": "56+"}
    users = [(u, g, codes.get(a, a), occ) for u, g, a, occ, _ in _delimited(src / "users.dat", "::", 5)]
    return Tables(_spec("ml-1m", False, True), inter, _item_rows(items, inter, None), _user_rows(users))


def convert_recbole(src: Path) -> Tables:
    """RecBole atomic files; field names follow RecBole's MovieLens conventions."""
    inter_file = _one(src, ".inter")
    name = inter_file.stem
    cols, rows = _atomic(inter_file)
    inter: Rows = [["user_id", "item_id", "timestamp", "rating"]]
    inter += [[r[cols["user_id"]], r[cols["item_id"]], r[cols["timestamp"]], r[cols["rating"]]] for r in rows]
    icols, irows = _atomic(_one(src, ".item"))
    title_col = next(c for c in ("movie_title", "title") if c in icols)
    items = []
    for r in irows:
        name_, year = split_title(r[icols[title_col]])
        year = r[icols["release_year"]] if "release_year" in icols else year
        genres = r[icols["class"]].split() if "class" in icols else []
        items.append((r[icols["item_id"]], name_, year, genres))
    users = None
    if (src / f"{name}.user").is_file():
        ucols, urows = _atomic(src / f"{name}.user")
        users = _user_rows(
            (r[ucols["user_id"]], r[ucols["gender"]], age_group(int(r[ucols["age"]])), r[ucols["occupation"]])
            for r in urows
        )
    return Tables(_spec(name, False, users is not None), inter, _item_rows(items, inter, None), users)


def _one(src: Path, suffix: str) -> Path:
    found = sorted(src.glob(f"*{suffix}"))
    if not found:
        raise DatasetError(f"*{suffix}", f"no RecBole atomic file in {src}")
    return found[0]


def _atomic(path: Path) -> tuple[dict[str, int], Rows]:
    rows = _delimited(path, "\t", None)
    cols = {h.split(":")[0]: i for i, h in enumerate(rows[0])}
    return cols, rows[1:]


def _csv(path: Path, header: tuple[str, ...]) -> Rows:
    if not path.is_file():
        raise DatasetError(path.name, f"missing from {path.parent}")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0]) != header:
        raise DatasetError(path.name, f"expected header {list(header)}", row=1)
    return rows


def _delimited(path: Path, sep: str, width: int | None) -> Rows:
    if not path.is_file():
        raise DatasetError(path.name, f"missing from {path.parent}")
    rows = [line.rstrip("\r\n").split(sep) for line in path.read_text(encoding="latin-1").splitlines() if line.strip()]
    width = width or len(rows[0])
    for r, row in enumerate(rows, start=1):
        if len(row) != width:
            raise DatasetError(path.name, f"has {len(row)} fields, expected {width}", row=r)
    return rows


CONVERTERS: dict[str, Callable[[Path], Tables]] = {
    "movielens-latest": convert_latest,
    "ml-100k": convert_ml100k,
    "ml-1m": convert_ml1m,
    "recbole": convert_recbole,
}


def detect_format(src: Path) -> str | None:
    markers = {"movies.csv": "movielens-latest", "u.data": "ml-100k", "ratings.dat": "ml-1m"}
    for marker, fmt in markers.items():
        if (src / marker).is_file():
            return fmt
    return "recbole" if any(src.glob("*.inter")) else None
