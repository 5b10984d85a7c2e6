"""The adapter wire format: what verifies, and each way a blob is refused."""

from __future__ import annotations

import numpy as np
import pytest

from common.adapter import MAX_BLOB_BYTES, AdapterRejectedError, Manifest, decode, encode

KEY = b"shared-secret"
SHAPES = {"A": (2, 4), "B": (4, 2), "item_bias": (5,)}


def _tensors(fill: float = 0.5) -> dict[str, np.ndarray]:
    return {k: np.full(s, fill, np.float32) for k, s in SHAPES.items()}


def _fields(version: int = 3, key: bytes | None = KEY, **tensors: np.ndarray) -> dict[bytes, bytes]:
    t = {**_tensors(), **tensors}
    m = Manifest(version, "base1", {k: list(v.shape) for k, v in t.items()}, 10)
    return {k.encode(): v for k, v in encode(t, m, key).items()}


def test_a_signed_adapter_round_trips() -> None:
    manifest, tensors = decode(_fields(), KEY, SHAPES, newer_than=2)
    assert manifest.version == 3
    assert manifest.base_model == "base1"
    np.testing.assert_array_equal(tensors["B"], _tensors()["B"])


@pytest.mark.parametrize(
    ("fields", "key", "newer_than", "reason"),
    [
        (_fields(key=b"another key"), KEY, 0, "signature"),
        (_fields(key=None), KEY, 0, "signature"),  # unsigned while a key is configured
        (_fields(), KEY, 3, "stale"),
        (_fields(item_bias=np.zeros(6, np.float32)), KEY, 0, "shape"),
        (_fields(B=np.full((4, 2), np.nan, np.float32)), KEY, 0, "shape"),
        ({b"manifest": b"{}", b"weights": b"\x00garbage", b"signature": b""}, None, 0, "corrupt"),
        ({b"weights": b"x"}, None, 0, "corrupt"),
        ({b"manifest": b"{}", b"weights": b"x" * (MAX_BLOB_BYTES + 1)}, None, 0, "oversized"),
    ],
)
def test_bad_adapters_are_refused_with_their_reason(
    fields: dict[bytes, bytes], key: bytes | None, newer_than: int, reason: str
) -> None:
    with pytest.raises(AdapterRejectedError) as e:
        decode(fields, key, SHAPES, newer_than)
    assert e.value.reason == reason


def test_a_tampered_weight_fails_the_signature() -> None:
    f = _fields()
    f[b"weights"] = f[b"weights"][:-4] + b"\x00\x00\x80\x3f"
    with pytest.raises(AdapterRejectedError, match="signature"):
        decode(f, KEY, SHAPES, 0)
