"""The adapter wire format between the learner (writes) and the service (reads).

An adapter version in Redis is one hash `recsys:adapter:v<N>` with three fields:
- `manifest`: JSON {format_version, version, base_model, shapes, events_seen, created_at, items};
  `items` names the rows beyond the trained catalogue (items added after training), in row order;
- `weights`: safetensors bytes (numpy arrays by name; never pickle);
- `signature`: hex HMAC-SHA256 over the manifest and the weights with a shared secret.
The learner writes the hash, moves the pointer `recsys:adapter:current` and publishes the version on
`recsys:adapter:published` in one MULTI/EXEC transaction. A reader accepts a version only if it is
newer than what it serves, its signature verifies (when a key is configured), it parses and its shapes
match the model it serves; otherwise `AdapterRejectedError` says why.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

FORMAT_VERSION = 1
KEY_PREFIX = "recsys:adapter:"
MAX_BLOB_BYTES = 64 << 20  # an adapter is small by design; anything larger is refused unread


def version_key(prefix: str, version: int) -> str:
    return f"{prefix}v{version}"


def pointer_key(prefix: str) -> str:
    return f"{prefix}current"


def channel(prefix: str) -> str:
    return f"{prefix}published"


class AdapterRejectedError(ValueError):
    """An adapter that must not be served; `reason` is a short label for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Manifest:
    version: int
    base_model: str  # the serving model's version: an adapter only fits the model it was trained on
    shapes: dict[str, list[int]]
    events_seen: int
    created_at: float = field(default_factory=time.time)
    format_version: int = FORMAT_VERSION
    items: list[str] = field(default_factory=list)  # ids of the item rows after the trained ones


Shapes = dict[str, tuple[int, ...]]


def sign(key: bytes, manifest: bytes, weights: bytes) -> str:
    h = hmac.new(key, digestmod=hashlib.sha256)
    for part in (manifest, weights):  # length-prefixed: no shifting bytes between the two parts
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def encode(tensors: dict[str, np.ndarray], manifest: Manifest, key: bytes | None) -> dict[str, bytes]:
    weights = st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()})
    raw = json.dumps(asdict(manifest), sort_keys=True).encode()
    signature = sign(key, raw, weights) if key else ""
    return {"manifest": raw, "weights": weights, "signature": signature.encode()}


def decode(fields: dict[bytes, bytes], key: bytes | None, expect: Shapes | Callable[[Manifest], Shapes],
           newer_than: int) -> tuple[Manifest, dict[str, np.ndarray]]:  # fmt: skip
    """Verify and parse one stored version; raises AdapterRejectedError. `expect`: the shapes, or what
    they must be for a manifest (the item rows grow with the items added after training)."""
    raw, weights, sig = fields.get(b"manifest"), fields.get(b"weights"), fields.get(b"signature", b"")
    if raw is None or weights is None:
        raise AdapterRejectedError("corrupt", "manifest or weights missing")
    if len(weights) + len(raw) > MAX_BLOB_BYTES:
        raise AdapterRejectedError("oversized", f"{len(weights) + len(raw)} bytes")
    if key is not None and not hmac.compare_digest(sig, sign(key, raw, weights).encode()):
        raise AdapterRejectedError("signature", "HMAC does not verify")
    try:
        m = Manifest(**json.loads(raw))
        if not all(isinstance(x, str) for x in m.items) or len(set(m.items)) != len(m.items):
            raise ValueError("items must be distinct ids")
        tensors = st_load(weights)
    except Exception as e:  # any parse failure of untrusted bytes is the same verdict
        raise AdapterRejectedError("corrupt", str(e)[:200]) from e
    if m.format_version != FORMAT_VERSION:
        raise AdapterRejectedError("format", f"format {m.format_version}, expected {FORMAT_VERSION}")
    if m.version <= newer_than:
        raise AdapterRejectedError("stale", f"version {m.version} is not newer than {newer_than}")
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    expect = expect(m) if callable(expect) else expect
    if got != expect or any(not np.isfinite(v).all() for v in tensors.values()):
        raise AdapterRejectedError("shape", f"got {got}, expected {expect} (finite)")
    return m, tensors
