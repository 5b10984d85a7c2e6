"""Which Qdrant engine a location string names: `http(s)://...` a Qdrant server, `qdrant-local:PATH` or
`:memory:` qdrant-client's local mode, anything else a folder for the embedded Qdrant Edge engine."""

from __future__ import annotations

from pathlib import Path

from retrieval.edge import EdgeEngine, IndexInUseError
from retrieval.index import IndexEngine
from retrieval.qdrant import QdrantEngine

__all__ = ["LOCAL_PREFIX", "IndexInUseError", "make_engine"]

LOCAL_PREFIX = "qdrant-local:"


def make_engine(location: str, api_key: str | None = None) -> IndexEngine:
    if location.startswith(("http://", "https://")):
        return QdrantEngine(location, api_key=api_key)
    if location == ":memory:":
        return QdrantEngine(location)
    if location.startswith(LOCAL_PREFIX):
        path = location.removeprefix(LOCAL_PREFIX)
        try:
            return QdrantEngine(path)
        except RuntimeError as e:  # qdrant-client's folder lock (portalocker), held by another process
            if "already accessed by another instance" in str(e):
                raise IndexInUseError(path) from e
            raise
    return EdgeEngine(Path(location))
