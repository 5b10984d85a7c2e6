"""Rewrites one marked section of BENCHMARKS.md, leaving the others as they are, so each bench
script owns its own part of the file; keeps per-(row, seed) results the sections are built from."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def write_section(name: str, body: str, path: Path = BENCHMARKS) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def command_line() -> str:
    """How this bench was run, as a shell would re-run it (arguments quoted where they need it)."""
    return " ".join(["python", f"bench/{Path(sys.argv[0]).name}", *map(shlex.quote, sys.argv[1:])])


def machine() -> str:
    """The CPU a figure was measured on: timings move by 2-3x between the machines this project runs on."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.machine())
    return f"{name}, {os.cpu_count()} cores"


RESULTS = Path(__file__).resolve().parent / "results"
Cells = dict[str, dict[str, dict[str, float]]]  # row (model or variant) -> seed -> metrics


def load_cells(name: str) -> Cells:
    """The kept (row, seed) results of bench/results/<name>.json: runs add to them cell by cell."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def keep_cell(name: str, cells: Cells, row: str, seed: int, metrics: dict[str, float]) -> None:
    """Adds one cell and writes the store at once, so an interrupted run keeps its work; cells another
    process stored meanwhile are kept (runs of other seeds or variants can go in parallel)."""
    for r, seeds in load_cells(name).items():
        for s, m in seeds.items():
            cells.setdefault(r, {}).setdefault(s, m)
    cells.setdefault(row, {})[str(seed)] = metrics
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(cells, indent=1))
