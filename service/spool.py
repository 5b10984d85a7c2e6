"""The feedback spool: an append-only, fsynced write-ahead log of accepted events (the transactional
outbox pattern). Every event is durable here before `POST /feedback` answers 202; one forwarder reads
it in order and commits its read position only after Kafka acknowledged, so a Kafka outage or a service
crash loses nothing and replays in the order events were accepted.

Layout: numbered segments `NNNNNNNN.log` (one JSON event per line) and `position.json` ({segment,
offset}: everything before it has been published). Appends go to the newest segment; it rolls over at
`segment_bytes`; a segment is deleted once the position has moved past it.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path


class SpoolError(OSError):
    """The spool could not make events durable (disk full, permissions): the request must fail."""


@dataclass(frozen=True, order=True)
class Position:
    segment: int
    offset: int  # bytes into the segment


@dataclass(frozen=True)
class Record:
    end: Position  # the position just after this record
    line: bytes


class Spool:
    def __init__(self, folder: Path, segment_bytes: int = 64 << 20) -> None:
        self.folder, self.segment_bytes = folder, segment_bytes
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # appends come from worker threads
        self.committed = self._load_position()
        segments = self._segments()
        self._head = segments[-1] if segments else self.committed.segment
        self._cut_torn_tail(self._path(self._head))
        self.pending = self._count_pending()

    def append(self, lines: list[bytes]) -> Position:
        """Durably append lines (no newlines inside); returns the position after the last one."""
        if any(b"\n" in x for x in lines):
            raise ValueError("spool records are single lines")
        data = b"".join(x + b"\n" for x in lines)
        with self._lock:
            path = self._path(self._head)
            if path.exists() and path.stat().st_size >= self.segment_bytes:
                self._head += 1
                path = self._path(self._head)
            try:
                with path.open("ab") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                    end = f.tell()
            except OSError as e:
                raise SpoolError(f"spool write failed: {e}") from e
            self.pending += len(lines)
            return Position(self._head, end)

    def read(self, after: Position, limit: int) -> list[Record]:
        """Up to `limit` records after `after`, in append order, across segment boundaries."""
        out: list[Record] = []
        seg, offset = after.segment, after.offset
        while len(out) < limit:
            path = self._path(seg)
            if path.exists():
                with path.open("rb") as f:
                    f.seek(offset)
                    for line in f:
                        if not line.endswith(b"\n"):
                            break  # a record being appended right now: read it next time
                        offset += len(line)
                        out.append(Record(Position(seg, offset), line[:-1]))
                        if len(out) == limit:
                            return out
            if seg >= self._head:
                return out
            seg, offset = seg + 1, 0
        return out

    def commit(self, position: Position, count: int) -> None:
        """Record that everything up to `position` (`count` records) has been published."""
        tmp = self.folder / "position.json.tmp"
        tmp.write_text(json.dumps({"segment": position.segment, "offset": position.offset}))
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.folder / "position.json")
        with self._lock:
            self.committed = position
            self.pending -= count
            for seg in self._segments():
                if seg < position.segment:
                    self._path(seg).unlink(missing_ok=True)

    @staticmethod
    def _cut_torn_tail(path: Path) -> None:
        """A crash mid-append leaves a partial last line (never acknowledged): cut it so the next
        append starts on a fresh line."""
        if not path.exists() or path.stat().st_size == 0:
            return
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            with path.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
                os.fsync(f.fileno())

    def _path(self, segment: int) -> Path:
        return self.folder / f"{segment:08d}.log"

    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.folder.glob("*.log"))

    def _load_position(self) -> Position:
        path = self.folder / "position.json"
        if not path.exists():
            segments = self._segments()
            return Position(segments[0] if segments else 0, 0)
        raw = json.loads(path.read_text())
        return Position(int(raw["segment"]), int(raw["offset"]))

    def _count_pending(self) -> int:
        n, at = 0, self.committed
        while batch := self.read(at, 10_000):
            n, at = n + len(batch), batch[-1].end
        return n
