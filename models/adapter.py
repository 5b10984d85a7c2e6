"""The serving adapter that the streaming learner trains (paper eq. 26-33 act on it), kept small enough
to ship and swap on every update: a low-rank correction of the user vector, a bias and a vector
correction per item, and the popularity the eq. 15 term reads. The base model stays fixed between full
re-trainings; the item corrections and the popularity are written into the live index, so retrieval
serves what was learnt.

    u' = u + B (A u)            A: (r, D), B: (D, r), B starts at zero so a fresh adapter is the identity
    v'_i = v_i + delta_i        delta starts at zero
    s(u, i) = u' . v'_i + b_i + gamma * log_pop_i       log_pop starts as the model's log(1 + pop)

The item rows are the trained catalogue's, then the items added after training (`grow`) in the order
the learner learnt of them; a published version names those extra rows by id (`Manifest.items`), so a
reader maps them onto its own catalogue whatever order it added them in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from common.adapter import Manifest, Shapes


class ServingAdapter(nn.Module):
    log_pop: torch.Tensor

    def __init__(self, dim: int, num_items: int, rank: int, log_pop: torch.Tensor | None = None) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.randn(rank, dim) / dim**0.5)
        self.B = nn.Parameter(torch.zeros(dim, rank))
        self.item_bias = nn.Parameter(torch.zeros(num_items))
        self.item_delta = nn.Parameter(torch.zeros(num_items, dim))
        self.register_buffer("log_pop", torch.zeros(num_items) if log_pop is None else log_pop.detach().float().clone())

    def grow(self, m: int) -> None:
        """Rows for `m` items added after training: no correction, no bias, no popularity yet."""
        self.item_bias = nn.Parameter(torch.cat([self.item_bias.detach(), torch.zeros(m)]))
        self.item_delta = nn.Parameter(
            torch.cat([self.item_delta.detach(), self.item_delta.new_zeros(m, self.B.shape[0])])
        )
        self.log_pop = torch.cat([self.log_pop, torch.zeros(m)])

    def user(self, u: torch.Tensor) -> torch.Tensor:
        """u: (..., D) -> (..., D)."""
        return u + (u @ self.A.T) @ self.B.T

    def scores(self, u: torch.Tensor, items: torch.Tensor, gamma: float) -> torch.Tensor:
        """u: (B, D), items: (N, D) the base model's vectors -> (B, N)."""
        return self.user(u) @ (items + self.item_delta).T + self.item_bias + gamma * self.log_pop

    def tensors(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in self.state_dict().items()}

    def load_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        self.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()})

    @staticmethod
    def shapes(dim: int, num_items: int, rank: int) -> Shapes:
        return {"A": (rank, dim), "B": (dim, rank), "item_bias": (num_items,), "item_delta": (num_items, dim),
                "log_pop": (num_items,)}  # fmt: skip

    @staticmethod
    def shapes_for(dim: int, trained_items: int, rank: int) -> Callable[[Manifest], Shapes]:
        """The shapes a published version must have: a row per trained item and per item it names."""
        return lambda m: ServingAdapter.shapes(dim, trained_items + len(m.items), rank)


def placed_rows(trained: int, items: Sequence[str], index: Mapping[str, int], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Where a version's item rows go in a catalogue of `n` items: (source rows, destination rows). The
    trained rows keep their place; the rows after them, named by `items`, go where `index` puts those
    ids; rows for ids the catalogue does not hold (or holds beyond `n`) are left out."""
    added = [(trained + j, index.get(x, n)) for j, x in enumerate(items)]
    kept = [(r, i) for r, i in added if i < n]
    src = np.array([*range(min(n, trained)), *(r for r, _ in kept)], np.int64)
    dst = np.array([*range(min(n, trained)), *(i for _, i in kept)], np.int64)
    return src, dst


class AdapterView:
    """The service's read-only numpy view of one adapter version: swapped as one reference."""

    def __init__(self, version: int, tensors: dict[str, np.ndarray], items: Sequence[str] = ()) -> None:
        self.version, self.items = version, list(items)  # items: the ids of the rows after the trained ones
        self._tensors = tensors
        self.trained = len(tensors["log_pop"]) - len(self.items)
        self.A, self.B = tensors["A"], tensors["B"]
        # biases are served for the trained items only (`item_rows` carries added items' corrections)
        self.item_bias = tensors["item_bias"][: self.trained]
        self.item_delta, self.log_pop = tensors["item_delta"], tensors["log_pop"]
        self.has_bias = bool(np.any(self.item_bias))

    def tensors(self) -> dict[str, np.ndarray]:
        """Copies of the published tensors (what a test or a bench republishes, altered)."""
        return {k: v.copy() for k, v in self._tensors.items()}

    def user(self, u: np.ndarray) -> np.ndarray:
        out: np.ndarray = u + self.B @ (self.A @ u)
        return out

    def item_rows(self, vectors: np.ndarray, item_index: Mapping[str, int]) -> np.ndarray:
        """(N, D + 1) index rows: the base model's item vectors (popularity coordinate last) as this
        version corrects them. `item_index` places the added items' rows; an item this version has no
        row for keeps its base row."""
        src, dst = placed_rows(self.trained, self.items, item_index, len(vectors))
        out = vectors.copy()
        out[dst, :-1] += self.item_delta[src]
        out[dst, -1] = self.log_pop[src]
        return out

    @staticmethod
    def identity(dim: int, log_pop: np.ndarray, rank: int) -> AdapterView:
        zeros = {k: np.zeros(s, np.float32) for k, s in ServingAdapter.shapes(dim, len(log_pop), rank).items()}
        return AdapterView(0, zeros | {"log_pop": np.asarray(log_pop, np.float32)})
