"""Which Qdrant engine a location string names: `http(s)://...` a Qdrant server, `qdrant-local:PATH` or
`:memory:` qdrant-client's local mode, anything else a folder for the embedded Qdrant Edge engine."""

from __future__ import annotations

from pathlib import Path

from retrieval.edge import EdgeEngine
from retrieval.index import IndexEngine
from retrieval.qdrant import QdrantEngine

LOCAL_PREFIX = "qdrant-local:"


def make_engine(location: str, api_key: str | None = None) -> IndexEngine:
    if location.startswith(("http://", "https://")):
        return QdrantEngine(location, api_key=api_key)
    if location == ":memory:":
        return QdrantEngine(location)
    if location.startswith(LOCAL_PREFIX):
        return QdrantEngine(location.removeprefix(LOCAL_PREFIX))
    return EdgeEngine(Path(location))
