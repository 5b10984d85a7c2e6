"""Dataset files: the generic on-disk format, MovieLens converters, and lookup by name or path.

`load_dataset("ml-latest-small")` reads the copy bundled with the project; any other argument is a
folder in the generic format or in one of the MovieLens formats (converted in memory).
"""

from __future__ import annotations

from pathlib import Path

from models.data import RecDataset
from recdata.movielens import CONVERTERS, detect_format
from recdata.tables import SPEC, DatasetError, DatasetSpec, Tables, build_dataset

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "data"
BUNDLED = {"ml-latest-small": BUNDLED_DIR / "ml-latest-small"}

__all__ = ["CONVERTERS", "DatasetError", "DatasetSpec", "Tables", "convert", "load_dataset", "read_tables"]


def resolve(name_or_path: str | Path) -> Path:
    path = BUNDLED.get(str(name_or_path), Path(name_or_path))
    if not path.is_dir():
        known = ", ".join(BUNDLED)
        raise DatasetError(str(name_or_path), f"no such dataset folder (bundled names: {known})")
    return path


def read_tables(name_or_path: str | Path, fmt: str | None = None) -> Tables:
    path = resolve(name_or_path)
    if fmt is None and (path / SPEC).is_file():
        return Tables.read(path)
    fmt = fmt or detect_format(path)
    if fmt is None or fmt not in CONVERTERS:
        raise DatasetError(str(path), f"unknown format {fmt!r}: expected {SPEC} or one of {sorted(CONVERTERS)}")
    return CONVERTERS[fmt](path)


def load_dataset(name_or_path: str | Path, fmt: str | None = None) -> RecDataset:
    return build_dataset(read_tables(name_or_path, fmt))


def convert(src: str | Path, dst: Path, fmt: str | None = None) -> RecDataset:
    """Convert to the generic format in `dst`, validating it by loading it back."""
    read_tables(src, fmt).write(dst)
    return load_dataset(dst)
