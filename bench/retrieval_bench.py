"""Retrieval benchmarks: query latency of the Qdrant engines against an exact torch matmul + top-k in the
same run, their recall of the exact top-10, and RAG context precision@K on ml-latest-small.

    python bench/retrieval_bench.py                       # 10k and 100k synthetic items, then RAG
    python bench/retrieval_bench.py --sizes 10000 --no-rag

Prints each figure and rewrites the `retrieval` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from markdown_sections import command_line, write_section
from tqdm import tqdm

from models.splits import leave_one_out
from recdata import load_dataset
from retrieval.context import CONTEXT, ContextStore, ContextWeights, build_context_index, build_entries
from retrieval.edge import EdgeEngine, EdgeIndex
from retrieval.index import Filters, Hit, VectorIndex
from retrieval.qdrant import QdrantEngine
from training.text_embeddings import TextEncoder

DIM = 65  # 64-d fused vector + the popularity coordinate, as served
GENRES = [f"g{i}" for i in range(18)]
FIELDS = {"categories": "keyword", "year": "float"}
CACHE = Path(".cache/text-embeddings")


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, list[dict[str, object]]]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    cats = rng.integers(0, len(GENRES), size=(n, 2))
    payloads = [{"categories": sorted({GENRES[a], GENRES[b]}), "year": float(1950 + i % 75)}
                for i, (a, b) in enumerate(cats)]  # fmt: skip
    return vectors, payloads


def fill(index: VectorIndex, vectors: np.ndarray, payloads: list[dict[str, object]], name: str) -> float:
    start = time.perf_counter()
    for lo in tqdm(range(0, len(vectors), 2048), desc=f"upsert {name}", leave=False):
        ids = list(range(lo, min(lo + 2048, len(vectors))))
        index.upsert(ids, vectors[ids], [payloads[i] for i in ids])
    return time.perf_counter() - start


class TorchExact:
    """The baseline: one matmul and top-k over all vectors, exclusions and filters as a mask."""

    def __init__(self, vectors: np.ndarray, payloads: list[dict[str, object]]) -> None:
        self.v = torch.from_numpy(vectors)
        self.payloads = payloads
        self.year = torch.tensor([p["year"] for p in payloads])
        self.cats = {g: torch.tensor([g in p["categories"] for p in payloads]) for g in GENRES}  # type: ignore[operator]

    def search(self, q: np.ndarray, k: int, f: Filters | None = None) -> list[Hit]:
        s = self.v @ torch.from_numpy(q)
        if f is not None:
            keep = torch.ones_like(s, dtype=torch.bool)
            if f.categories:
                keep &= torch.stack([self.cats[c] for c in f.categories]).any(0)
            if f.year_min is not None:
                keep &= self.year >= f.year_min
            if f.year_max is not None:
                keep &= self.year <= f.year_max
            s = s.masked_fill(~keep, -torch.inf)
            if f.exclude_ids:
                s[torch.tensor(sorted(f.exclude_ids))] = -torch.inf
        top = s.topk(k)
        return [Hit(int(i), float(v), {}) for i, v in zip(top.indices, top.values, strict=True) if v > -torch.inf]


def time_queries(search: Callable[[np.ndarray, Filters | None], list[Hit]], queries: np.ndarray,
                 filters: list[Filters | None]) -> tuple[np.ndarray, list[list[int]]]:  # fmt: skip
    out, ms = [], []
    for q, f in zip(queries, filters, strict=True):
        t = time.perf_counter()
        hits = search(q, f)
        ms.append((time.perf_counter() - t) * 1000)
        out.append([h.id for h in hits])
    return np.array(ms), out


def cases(n: int, queries: int, rng: np.random.Generator) -> dict[str, list[Filters | None]]:
    excl = [Filters(exclude_ids=frozenset(rng.choice(n, 200, replace=False).tolist())) for _ in range(queries)]
    filt = [Filters(categories=(GENRES[i % 18],), year_min=1990.0, year_max=2010.0) for i in range(queries)]
    return {"plain": [None] * queries, "exclude 200 ids": excl, "genre + year filter": filt}


def scale(n: int, queries: int) -> list[str]:
    vectors, payloads = synthetic(n)
    rng = np.random.default_rng(1)
    qs = rng.normal(size=(queries, DIM)).astype(np.float32)
    exact = TorchExact(vectors, payloads)
    with tempfile.TemporaryDirectory() as tmp:
        edge_engine = EdgeEngine(Path(tmp))
        edge = edge_engine.create("items", DIM, FIELDS)
        build = {"qdrant-edge": fill(edge, vectors, payloads, "edge")}
        t = time.perf_counter()
        assert isinstance(edge, EdgeIndex)
        edge.seal()  # HNSW is built here where a segment passes the indexing threshold
        build["qdrant-edge"] += time.perf_counter() - t
        local = QdrantEngine(":memory:").create("items", DIM, FIELDS)
        build["qdrant-client local"] = fill(local, vectors, payloads, "local")
        engines: dict[str, Callable[[np.ndarray, Filters | None], list[Hit]]] = {
            "torch exact (baseline)": lambda q, f: exact.search(q, 10, f),
            "qdrant-edge": lambda q, f: edge.search(q, 10, f),
            "qdrant-client local": lambda q, f: local.search(q, 10, f),
        }
        rows = []
        for case, filters in cases(n, queries, rng).items():
            base_ms, truth = time_queries(engines["torch exact (baseline)"], qs, filters)
            for name, fn in engines.items():
                m = min(queries, 30) if name == "qdrant-client local" and case != "plain" else queries
                ms, got = time_queries(fn, qs[:m], filters[:m])
                recall = np.mean([len(set(a) & set(b)) / max(len(b), 1) for a, b in zip(got, truth[:m], strict=False)])
                p50, p99 = np.percentile(ms, [50, 99])
                ratio = p50 / np.percentile(base_ms, 50)
                rows.append(f"| {n:,} | {case} | {name} | {p50:.2f} | {p99:.2f} | {ratio:.1f}x | {recall:.3f} | {m} |")
                print(rows[-1], flush=True)
        edge.close()
    builds = ", ".join(f"{k} {v:.1f} s" for k, v in build.items())
    return [*rows, f"| {n:,} | build time | {builds} | | | | | |"]


def rag_precision(users: int = 300, seed: int = 0) -> str:
    data = load_dataset("ml-latest-small")
    split = leave_one_out(data)
    entries = build_entries(data)

    embed = TextEncoder(CACHE, progress=True)

    with tempfile.TemporaryDirectory() as tmp:
        index = build_context_index(EdgeEngine(Path(tmp)), entries, embed, CONTEXT)
        genres = [set(data.aspects(i)) for i in range(data.num_items)]
        title = data.titles()
        rng = np.random.default_rng(seed)
        picked = rng.choice(len(split.test), size=min(users, len(split.test)), replace=False)
        variants = {"cosine only (l2 = l3 = 0)": ContextWeights(l2=0.0, l3=0.0),
                    "+ temporal decay": ContextWeights(l3=0.0), "+ credibility": ContextWeights(l2=0.0),
                    "full eq. 10 (l1 1, l2 0.3, l3 0.3)": ContextWeights()}  # fmt: skip
        ks = (3, 5, 10, 20)
        prec = {v: {k: [] for k in ks} for v in variants}  # type: ignore[var-annotated]
        for r in tqdm(picked, desc="rag queries"):
            hist, target = split.test.history_of(r), int(split.test.targets_of(r)[0])
            counts: dict[str, int] = {}
            for i in hist:
                for g in genres[i]:
                    counts[g] = counts.get(g, 0) + 1
            top = {g for g, _ in sorted(counts.items(), key=lambda x: -x[1])[:3]}
            query = f"{title[target]}. {', '.join(sorted(top))}"
            t_now = int(data.interactions.timestamp.max())
            for v, w in variants.items():
                got = ContextStore(index, embed, w).retrieve(query, k=20, t_now=t_now)
                rel = [c.item == target or bool(genres[c.item] & genres[target] & top) for c in got]
                for k in ks:
                    prec[v][k].append(np.mean(rel[:k]) if rel else 0.0)
    lines = ["| scoring | " + " | ".join(f"P@{k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    lines += [f"| {v} | " + " | ".join(f"{np.mean(prec[v][k]):.3f}" for k in ks) + " |" for v in variants]
    kinds = {k: sum(e.kind == k for e in entries) for k in ("description", "ratings", "similar")}
    return (f"{len(entries):,} context entries ({kinds}) from ml-latest-small, MiniLM-embedded, in Qdrant Edge. "
            f"{len(picked)} test users; query = the held-out item's title plus the user's three most frequent genres "
            "(from their history); an entry is relevant if it is about that item, or mentions a genre the item "
            "shares with the user's top three.\n\n" + "\n".join(lines) + "\n")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--no-rag", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)  # the service answers one query per request on one core
    head = ["| items | query | engine | p50 ms | p99 ms | p50 vs torch | recall@10 of exact | queries |",
            "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    rows = [r for n in (int(s) for s in args.sizes.split(",")) for r in scale(n, args.queries)]
    body = (f"## Retrieval\n\nCommand: `{command_line()}`. Synthetic "
            f"{DIM}-d vectors, 18 genres, top-10 per query, one thread for torch; qdrant-client local mode gets "
            "30 queries where it is slow.\n\n" + "\n".join(head + rows) + "\n")  # fmt: skip
    if not args.no_rag:
        body += "\n### RAG context precision@K\n\n" + rag_precision()
    print(body)
    write_section("retrieval", body)


if __name__ == "__main__":
    main()
