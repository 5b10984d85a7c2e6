"""Training windows over users' item sequences, shared by the sequential models."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from models.scoring import PAD

Window = tuple[int, np.ndarray]  # (user, items: inputs plus the shifted target)


def training_windows(sequences: dict[int, np.ndarray], max_len: int, newest_only: bool = False) -> list[Window]:
    """Each user's sequence cut from the end into windows of max_len + 1 items, so long histories
    contribute all their transitions; `newest_only` keeps just the newest window per user."""
    windows = []
    for user, seq in sequences.items():
        for end in range(len(seq), 1, -max_len):
            windows.append((user, seq[max(0, end - max_len - 1) : end]))
            if newest_only:
                break
    return windows


def window_batches(
    windows: list[Window], batch_size: int, rng: np.random.Generator, length_buckets: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(users (B,), inputs (B, L), targets (B, L)), inputs and targets left-padded with PAD.

    Batches are drawn uniformly at random. `length_buckets` groups windows of similar length into a
    batch (shuffled within and across batches): less padding, but each batch is a biased sample (only
    short histories, or only long ones), and SASRec-CE lost about 0.012 NDCG@10 on ml-100k to it
    (BENCHMARKS.md, SASRec-CE settings).
    """
    if length_buckets:
        by_length = np.lexsort((rng.random(len(windows)), np.array([len(w) for _, w in windows])))
        batches = [by_length[s : s + batch_size] for s in range(0, len(by_length), batch_size)]
        batches = [batches[b] for b in rng.permutation(len(batches))]
    else:
        order = rng.permutation(len(windows))
        batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    for batch in batches:
        chunk = [windows[i] for i in batch]
        length = max(len(w) for _, w in chunk) - 1
        inp = np.full((len(chunk), length), PAD, dtype=np.int64)
        tgt = np.full((len(chunk), length), PAD, dtype=np.int64)
        for r, (_, w) in enumerate(chunk):
            inp[r, length - len(w) + 1 :] = w[:-1]
            tgt[r, length - len(w) + 1 :] = w[1:]
        users = torch.tensor([u for u, _ in chunk], dtype=torch.int64)
        yield users, torch.from_numpy(inp), torch.from_numpy(tgt)
