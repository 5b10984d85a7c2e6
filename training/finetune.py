"""A warm fine-tune: the served model's weights trained on for an epoch or two over its training
interactions plus the positive feedback that arrived since, with a fresh optimiser state. What a
periodic retrain from scratch (Gorse's way) learns from the stream, at a fraction of its cost: the
streaming learner's replay (bench/learner_bench.py, BENCHMARKS.md) measures both.

Every user's sequence is replayed, not only the active users': fine-tuning on the active users alone
drifted the model away from everyone else and lost to the frozen model in the same replay.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from common.events import EventType, FeedbackEvent
from models.data import Interactions, RecDataset
from models.llm4rec import LLM4Rec, LLM4RecConfig
from models.scoring import TrainData
from training.checkpoint import Switches, build_model
from training.fit import seed_everything


def merged(log: Interactions, new: Interactions) -> Interactions:
    """`log` with the `new` interactions, in `Interactions`' order (by user, then time; ties keep the old
    rows first). Ratings are kept: a new row without one (a click) has NaN, which the item features'
    mean rating skips."""
    u, i, t = (np.concatenate([a, b]) for a, b in
               zip((log.user, log.item, log.timestamp), (new.user, new.item, new.timestamp), strict=True))  # fmt: skip
    rating = None
    if log.rating is not None or new.rating is not None:
        rating = np.concatenate([_ratings(log), _ratings(new)])
    order = np.lexsort((t, u))
    return Interactions(u[order], i[order], t[order], None if rating is None else rating[order])


def _ratings(log: Interactions) -> np.ndarray:
    return log.rating.astype(np.float32) if log.rating is not None else np.full(len(log), np.nan, np.float32)


def fine_tune(model: LLM4Rec, data: RecDataset, log: Interactions, meta: Mapping[str, Any], cache_dir: Path,
              epochs: int = 1, seed: int = 0, warm: bool = True,
              fit_on: Interactions | None = None) -> LLM4Rec:  # fmt: skip
    """A model trained on `log` (the checkpoint's training interactions and the new ones; `fit_on`: only
    these of them, the popularity still counted on `log`) for `epochs` epochs, starting from `model`'s
    weights (`warm`) or from scratch, with the checkpoint's switches and configuration (`meta`: its
    config.json). The served popularity weight keeps its ratio to the learned one. `model` is left as it
    was."""
    train = TrainData(log, data.num_users, data.num_items)
    rng = seed_everything(seed)  # before the model: its initialisation draws from it
    new = build_model(data, train, Switches(**meta["switches"]), cache_dir, progress=False,
                      base=LLM4RecConfig.from_dict(meta["model"]))  # fmt: skip
    if warm:
        new.load_state_dict(model.state_dict())
    fit = train if fit_on is None else TrainData(fit_on, data.num_users, data.num_items)
    for _ in tqdm(range(epochs), desc=f"fine-tune on {len(fit.log):,} interactions", leave=False):
        new.fit_epoch(fit, rng)
    new.eval()
    learned = max(float(model.gamma.detach()), 1e-12)
    new.serve_gamma = float(model.serve_gamma or 0.0) / learned * float(new.gamma.detach())
    return new


def read_events(path: Path) -> list[FeedbackEvent]:
    """Feedback events, one JSON object per line (the spool's and the Kafka topic's format); raises
    ValueError naming the first line that is not one."""
    out = []
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(FeedbackEvent.model_validate_json(line))
                except ValueError as e:
                    raise ValueError(f"{path}, line {n}: not a feedback event ({e})") from e
    return out


def feedback_interactions(events: Iterable[FeedbackEvent], data: RecDataset) -> tuple[Interactions, int]:
    """The positive events on users and items the dataset knows, each event id once, as interactions
    (an event without a timestamp is stamped now, as the service stamps what it receives), and how many
    were left out for naming a user or item the dataset does not know (items added after training have
    no row in the model)."""
    users = {u: j for j, u in enumerate(data.user_ids)}
    items = {x: j for j, x in enumerate(data.item_ids)}
    rows, unknown, ids = [], 0, set()
    for e in events:
        if not e.is_positive or e.event_id in ids:
            continue
        ids.add(e.event_id)
        if e.user_id in users and e.item_id in items:
            stars = e.value if e.type is EventType.rating and e.value is not None else np.nan
            rows.append((users[e.user_id], items[e.item_id], e.timestamp or int(time.time()), stars))
        else:
            unknown += 1
    u, i, t = (np.array([r[k] for r in rows], np.int64) for k in range(3))
    return Interactions(u, i, t, np.array([r[3] for r in rows], np.float32)), unknown
