"""The embedded default's on-disk state: what Redis holds when Redis is configured (users' histories and
rejections, the event-id memory, published adapters) kept in one SQLite database in WAL mode. A change
is committed before the request that made it is answered, and a committed transaction is in the WAL
file, so it survives the process being killed (SIGKILL as well as SIGTERM); with synchronous=NORMAL
only a power loss may cost the newest ones."""

from __future__ import annotations

import sqlite3
from pathlib import Path

FILENAME = "embedded.sqlite"


def connect(folder: Path) -> sqlite3.Connection:
    """A connection to the folder's database (created on first use); statements autocommit unless a
    caller opens a transaction with BEGIN. One connection per store, all used from the event loop."""
    folder.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(folder / FILENAME, check_same_thread=False, isolation_level=None, timeout=5.0)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def in_memory() -> sqlite3.Connection:
    """The same kind of connection to a private in-memory database (no `state_dir`: nothing survives)."""
    return sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
