"""MostPop: every user gets the most interacted-with training items."""

from __future__ import annotations

import torch

from models.scoring import HistoryBatch, TrainData


class MostPop:
    name = "mostpop"

    def __init__(self, data: TrainData) -> None:
        self.popularity = torch.from_numpy(data.popularity()).float()  # (N,)

    def score(self, batch: HistoryBatch) -> torch.Tensor:
        return self.popularity.expand(batch.users.shape[0], -1)
