"""How a user's history becomes the query vector the item index ranks by: the trained generative user
model, or, before any model is trained, the mean content vector of the history (the cold-start
service). Both answer the same questions, so serving does not care which one it holds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from models.llm4rec import LLM4Rec
from retrieval.catalog import Catalogue

COLD_START_VERSION = "cold-start"
CONTENT_HISTORY = 50  # the newest items a content profile averages: older tastes drift


@torch.inference_mode()
def user_vector(model: LLM4Rec, history: Sequence[int]) -> np.ndarray:
    """(D,) the generative user model's state after the user's history (internal ids, oldest first)."""
    model.eval()
    return model.user_vectors(torch.tensor([list(history)], dtype=torch.long))[0].numpy()


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

    def encode(self, history: Sequence[int]) -> np.ndarray:
        """(D,) query vector after the history (internal item ids, oldest first; not empty)."""
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

    def encode(self, history: Sequence[int]) -> np.ndarray:
        return user_vector(self.model, history)


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

    def encode(self, history: Sequence[int]) -> np.ndarray:
        mean = self.catalogue.unit_vectors[list(history[-CONTENT_HISTORY:])].mean(0)
        out: np.ndarray = (mean / (np.linalg.norm(mean) + 1e-9)).astype(np.float32)
        return out
