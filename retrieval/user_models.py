"""How a user's history becomes the query vector the item index ranks by: the trained generative user
model, or, before any model is trained, the mean content vector of the history (the cold-start
service). Both answer the same questions, so serving does not care which one it holds.

`UserVectors` is the one encoding of a user that the service and the learner share: the same window
of the history, the same model call and the same cache policy, so the learner trains on the vectors
the service serves."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from cachetools import LRUCache

from models.llm4rec import LLM4Rec
from models.scoring import pad_histories
from retrieval.catalog import Catalogue

COLD_START_VERSION = "cold-start"
CONTENT_HISTORY = 50  # the newest items a content profile averages: older tastes drift
USER_CACHE_SIZE = 200_000
History = Sequence[int] | np.ndarray  # internal item ids, oldest first


def user_vectors(model: LLM4Rec, histories: Sequence[Sequence[int]]) -> torch.Tensor:
    """(B, D) the generative user model's state after each history (internal ids, oldest first).
    Under no_grad rather than inference_mode: the learner's autograd graph starts from these."""
    model.eval()
    with torch.no_grad():
        return model.user_vectors(pad_histories([np.asarray(h, np.int64) for h in histories], model.config.max_len))


def query_vector(user: np.ndarray, gamma: float) -> np.ndarray:
    """user: (D,) -> (D + 1,) so that the index ranks by u . v + gamma * log(1 + pop)."""
    return np.append(user, np.float32(gamma)).astype(np.float32)


class UserModel(Protocol):
    version: str  # the model_version answers carry
    cold_start: bool  # True: content vectors and popularity, no trained model yet

    @property
    def learned_gamma(self) -> float:
        """The popularity weight served when a request does not set one (eq. 15)."""
        ...

    @property
    def window(self) -> int:
        """The newest history items an encoding reads."""
        ...

    def encode(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """(B, D) user vectors after each history (internal item ids, oldest first; none empty)."""
        ...


@dataclass
class GenerativeUserModel:
    model: LLM4Rec
    version: str
    cold_start: bool = False

    @property
    def learned_gamma(self) -> float:
        g = self.model.serve_gamma
        return float(self.model.gamma.detach()) if g is None else float(g)

    @property
    def window(self) -> int:
        return self.model.config.max_len

    def encode(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        return user_vectors(self.model, histories)


@dataclass
class ContentUserModel:
    """The user as the mean direction of what they interacted with, in the text encoder's space."""

    catalogue: Catalogue  # read at each call: items added later have vectors there
    gamma: float
    version: str = COLD_START_VERSION
    cold_start: bool = True

    @property
    def learned_gamma(self) -> float:
        return self.gamma

    window: int = CONTENT_HISTORY

    def encode(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        unit = self.catalogue.unit_vectors
        means = np.stack([unit[list(h[-self.window :])].mean(0) for h in histories])
        return torch.from_numpy(means / (np.linalg.norm(means, axis=1, keepdims=True) + 1e-9)).float()


def appended(old: tuple[int, ...], new: tuple[int, ...], window: int, fewer_than: int) -> bool:
    """Whether the window `new` is the window `old` after fewer than `fewer_than` new items were
    appended (each window holds a history's newest `window` items; 1: `new` equals `old`). A whole
    window of new items never counts: nothing of the old one is left."""
    return any((old + new[len(new) - j :])[-window:] == new for j in range(min(fewer_than, window, len(new) + 1)))


class UserVectors:
    """Users' vectors under one cache policy: a user's vector is reused while fewer than
    `refresh_every` items were appended to the window it was encoded from. Any other change (an item
    moved by a re-interaction, a swapped model: a new `UserVectors`) re-encodes. At 1 every change of
    the window re-encodes; above 1 a vector may lag its user's newest items, which saves the learner
    most of its encoding (it meets each event's user) and a service little (users ask more often
    than they act). Callers without a user id ("") are encoded afresh and not cached."""

    def __init__(self, model: UserModel, refresh_every: int = 1, capacity: int = USER_CACHE_SIZE) -> None:
        self.model, self.refresh_every = model, refresh_every
        self._cache: LRUCache[str, tuple[tuple[int, ...], torch.Tensor]] = LRUCache(capacity)
        # an LRU read reorders entries: requests encode in worker threads when the LLM re-rank is on, while
        # `POST /feedback` reads `last` on the event loop
        self._lock = threading.Lock()

    def __call__(self, users: Sequence[str], histories: Sequence[History]) -> torch.Tensor:
        """(B, D) for each user's history (oldest first, not empty)."""
        w = self.model.window
        windows = [tuple(np.asarray(h[-w:], np.int64).tolist()) for h in histories]  # hashable, comparable
        out: list[torch.Tensor | None] = [self._cached(u, win) for u, win in zip(users, windows, strict=True)]
        todo = [j for j, v in enumerate(out) if v is None]
        if todo:
            for j, v in zip(todo, self.model.encode([windows[j] for j in todo]), strict=True):
                out[j] = v
                if users[j]:
                    with self._lock:
                        self._cache[users[j]] = (windows[j], v)
        return torch.stack(out)  # type: ignore[arg-type]

    def last(self, user: str) -> tuple[tuple[int, ...], torch.Tensor] | None:
        """The window `user` was last encoded from and its vector, if still cached."""
        if not user:
            return None
        with self._lock:
            return self._cache.get(user)

    def _cached(self, user: str, window: tuple[int, ...]) -> torch.Tensor | None:
        hit = self.last(user)
        if hit is None or not appended(hit[0], window, self.model.window, self.refresh_every):
            return None
        return hit[1]
