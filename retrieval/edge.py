"""The embedded default engine: Qdrant Edge (`qdrant-edge-py`), Qdrant's Rust engine in-process.

Chosen over qdrant-client's local mode by measurement (BENCHMARKS.md, retrieval section): local mode
scans every point in Python per query and evaluates payload filters point by point, while Edge runs
Qdrant's own segments, payload indexes and HNSW in-process.

On disk: `root/<name>/v<version>/` is one shard per built version and `root/<name>/CURRENT` names
the published one (and its dimension); publishing replaces that file atomically (os.replace).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from retrieval.index import Filters, Hit, Payload, VectorIndex, check_vectors

_SCHEMA = {"keyword": qe.PayloadSchemaType.Keyword, "float": qe.PayloadSchemaType.Float,
           "integer": qe.PayloadSchemaType.Integer}  # fmt: skip
KEEP_VERSIONS = 2  # the published one and its predecessor, which a running reader may still hold


class IndexInUseError(RuntimeError):
    """An embedded index folder that another process holds. Qdrant Edge locks a shard's write-ahead log
    for the process that opened it (qdrant-client's local mode locks its whole folder), so one folder
    serves one process at a time; a Qdrant server is what several processes share."""

    def __init__(self, location: str | Path, locked: str | Path | None = None) -> None:
        self.location = str(location)
        held = f" ({locked} is locked)" if locked is not None else ""
        super().__init__(
            f"the embedded index at {location} is in use by another process{held}: another llm4rec process "
            "holds it. Stop that process, or point RECSYS_INDEX__LOCATION at another folder, or run a Qdrant "
            "server (RECSYS_INDEX__LOCATION=http://HOST:6333) to serve several processes from one index."
        )


def edge_filter(f: Filters | None) -> qe.Filter | None:
    if f is None:
        return None
    must: list[Any] = []
    if f.categories:
        must.append(qe.FieldCondition("categories", match=qe.MatchAny(list(f.categories))))
    if f.year_min is not None or f.year_max is not None:
        must.append(qe.FieldCondition("year", range=qe.RangeFloat(gte=f.year_min, lte=f.year_max)))
    if f.item_ids:
        must.append(qe.FieldCondition("item", match=qe.MatchAny(list(f.item_ids))))
    must_not: list[Any] = [qe.HasIdCondition(set(f.exclude_ids))] if f.exclude_ids else []
    return qe.Filter(must=must or None, must_not=must_not or None) if must or must_not else None


class EdgeIndex:
    def __init__(self, shard: qe.EdgeShard, dim: int, path: Path, hnsw_ef: int = 256) -> None:
        self._shard, self._dim, self.path = shard, dim, path
        self._params = qe.SearchParams(hnsw_ef=hnsw_ef)  # only used where a segment has an HNSW graph

    @property
    def dim(self) -> int:
        return self._dim

    def upsert(self, ids: Sequence[int], vectors: np.ndarray, payloads: Sequence[Payload]) -> None:
        vectors = check_vectors(vectors, self._dim, len(ids))
        points = [qe.Point(int(i), v.tolist(), dict(p)) for i, v, p in zip(ids, vectors, payloads, strict=True)]
        self._shard.update(qe.UpdateOperation.upsert_points(points))

    def search(self, query: np.ndarray, k: int, filters: Filters | None = None, with_payload: bool = True) -> list[Hit]:
        q = check_vectors(np.asarray(query).reshape(1, -1), self._dim, 1)[0].tolist()
        if filters is not None and filters.exclude_ids and not filters.on_payload:
            # exclusions only (a user's seen items): over-fetching by their count and dropping them here
            # is exact and costs less than Edge's id filter (0.54 vs 0.68 ms: 10k items, 200 excluded, no payload)
            ranked = self._query(q, k + len(filters.exclude_ids), None, with_payload=False)
            hits = [h for h in ranked if h.id not in filters.exclude_ids][:k]
            if not with_payload:
                return hits
            payloads = self.retrieve([h.id for h in hits])
            return [Hit(h.id, h.score, payloads.get(h.id, {})) for h in hits]
        return self._query(q, k, filters, with_payload)

    def _query(self, q: list[float], k: int, filters: Filters | None, with_payload: bool) -> list[Hit]:
        f = edge_filter(filters)
        req = qe.QueryRequest(limit=k, query=qe.Query.Nearest(q), with_payload=with_payload, filter=f)
        return [Hit(int(p.id), float(p.score), dict(p.payload or {})) for p in self._shard.query(req)]

    def retrieve(self, ids: Sequence[int]) -> dict[int, Payload]:
        return {int(r.id): dict(r.payload or {}) for r in self._shard.retrieve([int(i) for i in ids], True, False)}

    def count(self) -> int:
        return int(self._shard.count(qe.CountRequest()))

    def seal(self) -> None:
        """After a bulk build: merge segments (and build HNSW where a segment is large enough), flush."""
        self._shard.optimize()
        self._shard.flush()

    def close(self) -> None:
        self._shard.close()


class EdgeEngine:
    def __init__(self, root: Path, hnsw_m: int = 16, ef_construct: int = 100, hnsw_ef: int = 256) -> None:
        self.root, self._hnsw, self.hnsw_ef = Path(root), (hnsw_m, ef_construct), hnsw_ef
        self._open: dict[Path, EdgeIndex] = {}

    def create(self, name: str, dim: int, indexed_fields: Mapping[str, str]) -> EdgeIndex:
        path = self.root / name / f"v{time.time_ns()}"
        m, ef = self._hnsw
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Dot),
            hnsw_config=qe.HnswIndexConfig(m=m, ef_construct=ef, full_scan_threshold=10_000),
        )
        shard = qe.EdgeShard.create(str(path), config)
        for field, kind in indexed_fields.items():
            shard.update(qe.UpdateOperation.create_field_index(field, _SCHEMA[kind]))
        self._open[path] = index = EdgeIndex(shard, dim, path, self.hnsw_ef)
        return index

    def publish(self, name: str, index: VectorIndex) -> None:
        assert isinstance(index, EdgeIndex), "EdgeEngine publishes its own indexes"
        index.seal()
        pointer = self.root / name / "CURRENT"
        tmp = pointer.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": index.path.name, "dim": index.dim}))
        os.replace(tmp, pointer)
        versions = sorted((p for p in pointer.parent.glob("v*") if p.is_dir()), key=lambda p: int(p.name[1:]))
        for old in versions[:-KEEP_VERSIONS]:
            if old != index.path:
                self._close(old)
                shutil.rmtree(old, ignore_errors=True)

    def open(self, name: str) -> EdgeIndex | None:
        pointer = self.root / name / "CURRENT"
        if not pointer.is_file():
            return None
        current = json.loads(pointer.read_text())
        path = pointer.parent / current["version"]
        if path not in self._open:
            self._open[path] = EdgeIndex(self._load(path), int(current["dim"]), path, self.hnsw_ef)
        return self._open[path]

    def _load(self, path: Path) -> qe.EdgeShard:
        try:
            return qe.EdgeShard.load(str(path))
        except Exception as e:  # qdrant-edge raises a bare Exception; a held WAL lock reads "Kind(WouldBlock)"
            if "WouldBlock" in str(e):
                raise IndexInUseError(self.root, path / "wal") from e
            raise

    def drop(self, name: str) -> None:
        folder = self.root / name
        for path in [p for p in self._open if p.parent == folder]:
            self._close(path)
        shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        for path in list(self._open):
            self._close(path)

    def _close(self, path: Path) -> None:
        if (index := self._open.pop(path, None)) is not None:
            index.close()
