"""The serving adapter that the streaming learner trains (paper eq. 26-33 act on it), kept small so
an update is cheap to ship and safe to swap: a low-rank correction of the user vector plus a bias per
item. The base model and the indexed item vectors stay fixed between full re-trainings.

    u' = u + B (A u)            A: (r, D), B: (D, r), B starts at zero so a fresh adapter is the identity
    s(u, i) = u' . v_i + b_i + gamma * log(1 + pop_i)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ServingAdapter(nn.Module):
    def __init__(self, dim: int, num_items: int, rank: int = 8) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.randn(rank, dim) / dim**0.5)
        self.B = nn.Parameter(torch.zeros(dim, rank))
        self.item_bias = nn.Parameter(torch.zeros(num_items))

    def user(self, u: torch.Tensor) -> torch.Tensor:
        """u: (..., D) -> (..., D)."""
        return u + (u @ self.A.T) @ self.B.T

    def scores(self, u: torch.Tensor, items: torch.Tensor, pop_term: torch.Tensor) -> torch.Tensor:
        """u: (B, D), items: (N, D), pop_term: (N,) -> (B, N)."""
        return self.user(u) @ items.T + self.item_bias + pop_term

    def tensors(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in self.state_dict().items()}

    def load_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        self.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()})

    @staticmethod
    def shapes(dim: int, num_items: int, rank: int = 8) -> dict[str, tuple[int, ...]]:
        return {"A": (rank, dim), "B": (dim, rank), "item_bias": (num_items,)}


class AdapterView:
    """The service's read-only numpy view of one adapter version: swapped as one reference."""

    def __init__(self, version: int, tensors: dict[str, np.ndarray]) -> None:
        self.version = version
        self.A, self.B, self.item_bias = tensors["A"], tensors["B"], tensors["item_bias"]
        self.has_bias = bool(np.any(self.item_bias))

    def user(self, u: np.ndarray) -> np.ndarray:
        out: np.ndarray = u + self.B @ (self.A @ u)
        return out

    @staticmethod
    def identity(dim: int, num_items: int, rank: int = 8) -> AdapterView:
        return AdapterView(0, {"A": np.zeros((rank, dim), np.float32), "B": np.zeros((dim, rank), np.float32),
                               "item_bias": np.zeros(num_items, np.float32)})  # fmt: skip
