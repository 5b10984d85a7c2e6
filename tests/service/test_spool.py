"""The feedback spool: durable append, ordered reads across segments, commit, restart, torn tails."""

from __future__ import annotations

from pathlib import Path

from service.spool import Position, Spool


def _lines(n: int, start: int = 0) -> list[bytes]:
    return [f'{{"n": {i}}}'.encode() for i in range(start, start + n)]


def test_reads_in_append_order_across_segments_and_drops_published_segments(tmp_path: Path) -> None:
    s = Spool(tmp_path, segment_bytes=40)  # a few records per segment
    for lo in range(0, 20, 4):
        s.append(_lines(4, lo))
    assert len(list(tmp_path.glob("*.log"))) > 2
    assert s.pending == 20
    records = s.read(s.committed, 100)
    assert [r.line for r in records] == _lines(20)
    s.commit(records[11].end, 12)
    assert s.pending == 8
    assert [r.line for r in s.read(s.committed, 100)] == _lines(8, 12)
    assert min(int(p.stem) for p in tmp_path.glob("*.log")) == records[11].end.segment


def test_restart_resumes_after_the_committed_position(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    s.append(_lines(5))
    s.commit(s.read(s.committed, 2)[-1].end, 2)
    s.append(_lines(3, 5))
    again = Spool(tmp_path)  # a new process after a crash
    assert again.pending == 6
    assert [r.line for r in again.read(again.committed, 100)] == _lines(6, 2)


def test_a_torn_tail_is_not_read_and_appends_continue(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    s.append(_lines(2))
    with (tmp_path / "00000000.log").open("ab") as f:
        f.write(b'{"n": 99')  # a crash mid-write: never acknowledged
    again = Spool(tmp_path)
    assert again.pending == 2
    again.append(_lines(1, 2))
    assert [r.line for r in again.read(Position(0, 0), 100)] == _lines(3)
