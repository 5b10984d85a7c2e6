"""An embedded index opened by a second process: the error names the folder and what to do, for Qdrant
Edge (a shard's write-ahead log is locked by the process that opened it) and qdrant-client's local mode
(its folder lock). The second process is a real one: the locks are per process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from retrieval.edge import EdgeEngine
from retrieval.engines import IndexInUseError, make_engine
from retrieval.index import IndexEngine

ROOT = Path(__file__).resolve().parents[2]

SECOND = textwrap.dedent("""
    import sys
    from retrieval.engines import IndexInUseError, make_engine
    try:
        index = make_engine(sys.argv[1]).open("items")
    except IndexInUseError as e:
        print(e)
        sys.exit(3)
    print("opened", index.count())
""")


def _second_process(location: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SECOND, location], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def _build(engine: IndexEngine) -> None:
    index = engine.create("items", 4, {})
    index.upsert([0, 1, 2], np.eye(3, 4, dtype=np.float32), [{}, {}, {}])
    engine.publish("items", index)


def _assert_says_what_to_do(message: str, folder: Path) -> None:
    assert f"the embedded index at {folder} is in use by another process" in message
    assert "another llm4rec process holds it" in message
    assert "Stop that process" in message
    assert "point RECSYS_INDEX__LOCATION at another folder" in message
    assert "RECSYS_INDEX__LOCATION=http://" in message


def test_a_second_process_on_an_open_edge_index_gets_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "index"
    engine = EdgeEngine(folder)
    _build(engine)  # this process now holds the published shard open

    out = _second_process(str(folder))
    assert out.returncode == 3, out.stderr
    _assert_says_what_to_do(out.stdout, folder)
    assert "wal is locked" in out.stdout
    assert "Traceback" not in out.stderr

    engine.close()  # released: the same second process now opens it
    out = _second_process(str(folder))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split() == ["opened", "3"]


def test_a_second_process_on_a_local_mode_folder_gets_the_same_error(tmp_path: Path) -> None:
    folder = tmp_path / "local"
    engine = make_engine(f"qdrant-local:{folder}")
    _build(engine)

    out = _second_process(f"qdrant-local:{folder}")
    assert out.returncode == 3, out.stderr
    _assert_says_what_to_do(out.stdout, folder)


def test_other_load_failures_are_not_reported_as_in_use(tmp_path: Path) -> None:
    folder = tmp_path / "index"
    engine = EdgeEngine(folder)
    _build(engine)
    engine.close()
    for shard in (folder / "items").glob("v*"):
        for wal in (shard / "wal").iterdir():
            wal.write_bytes(b"not a wal")
    with pytest.raises(Exception, match="Can't init WAL") as caught:  # a damaged WAL: not a lock, said as it is
        EdgeEngine(folder).open("items")
    assert not isinstance(caught.value, IndexInUseError)
