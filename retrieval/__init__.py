"""Retrieval: the Qdrant index of fused item vectors, the RAG context store and the user history store.

- `index`: the `VectorIndex` seam, its filters and hits, and `IndexEngine` (versioned, atomically
  published collections).
- `edge` / `qdrant`: the two Qdrant engines (in-process Rust `qdrant-edge-py`; qdrant-client for a server
  or its local mode).
- `catalog`: item vectors and payloads from a trained model, index (re)builds, cold-start upserts.
- `context`: the RAG context store of paper eq. 7-10.
- `history`: per-user interaction history (Redis or in-process).
"""
