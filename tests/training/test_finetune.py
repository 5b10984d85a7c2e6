"""`llm4rec finetune`: a checkpoint trained on for an epoch over its interactions plus new feedback
learns what the feedback says, writes a complete checkpoint, and refuses a malformed event file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from typer.testing import CliRunner

from llm4rec.cli import app
from models.data import Interactions
from models.llm4rec import LLM4Rec
from models.scoring import TrainData, pad_histories
from tests.conftest import SmallTrained
from training.checkpoint import checkpoint_version, load_serving_checkpoint
from training.features import _train_mean_rating
from training.finetune import merged

runner = CliRunner()
SWITCHERS = [f"u{u}" for u in range(0, 40, 2)]  # romance watchers who turn to these space films
NEW = ["m0", "m1", "m2", "m3"]


def _events(path: Path, extra: Sequence[dict[str, object]] = ()) -> Path:
    rows = [{"user_id": u, "item_id": i, "type": "click", "timestamp": 1_700_000_000 + 60 * k}
            for u in SWITCHERS for k, i in enumerate(NEW)]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in [*rows, *extra]) + "\n")
    return path


def _rank_of_new(model: LLM4Rec, small: SmallTrained) -> float:
    """Mean rank of each new item for a switcher whose history ends with the new items before it."""
    index = {x: j for j, x in enumerate(small.data.item_ids)}
    seqs = small.data.interactions
    ranks = []
    with torch.no_grad():
        items, _ = model.item_vectors()
        for u in SWITCHERS:
            old = seqs.item[seqs.user == small.data.user_ids.index(u)].tolist()
            for k in range(1, len(NEW)):
                history = np.array([*old, *(index[i] for i in NEW[:k])])
                scores = model.user_vectors(pad_histories([history], model.config.max_len)) @ items.T
                ranks.append(int((scores[0] > scores[0, index[NEW[k]]]).sum()))
    return float(np.mean(ranks))


def test_finetune_learns_the_new_feedback_and_writes_a_servable_checkpoint(
    checkpoint: Path, small_trained: SmallTrained, tmp_path: Path
) -> None:
    events = _events(tmp_path / "events.jsonl", [
        {"user_id": "u1", "item_id": "m5", "type": "dislike"},  # not a positive: not an interaction
        {"user_id": "stranger", "item_id": "m5", "type": "click"},  # a user the dataset does not know
        *[{"event_id": "sent-twice", "user_id": "u3", "item_id": "m9", "type": "click"}] * 2,  # learnt once
    ])  # fmt: skip
    out = tmp_path / "tuned"
    result = runner.invoke(app, ["finetune", "--model", str(checkpoint), "--events", str(events), "--out", str(out),
                                 "--cache-dir", str(small_trained.cache)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "81 new; 1 events on users or items" in result.output

    before = load_serving_checkpoint(checkpoint, small_trained.cache)
    after = load_serving_checkpoint(out, small_trained.cache)
    assert len(after.train.log) == len(before.train.log) + len(SWITCHERS) * len(NEW) + 1
    assert after.meta["fine_tune"]["from"] == before.version != after.version
    assert checkpoint_version(checkpoint) == before.version  # the source checkpoint is left as it was
    assert after.model.serve_gamma is not None
    # one epoch moves the switchers' next space film up their lists (ranks among 40 items)
    assert _rank_of_new(after.model, small_trained) < _rank_of_new(before.model, small_trained) - 2


def test_finetune_names_the_line_of_a_malformed_event(checkpoint: Path, small_trained: SmallTrained,
                                                       tmp_path: Path) -> None:  # fmt: skip
    events = _events(tmp_path / "events.jsonl", [{"user_id": "u1", "item_id": "m5", "type": "purchase?"}])
    out = tmp_path / "tuned"
    result = runner.invoke(app, ["finetune", "--model", str(checkpoint), "--events", str(events), "--out", str(out),
                                 "--cache-dir", str(small_trained.cache)])  # fmt: skip
    assert result.exit_code != 0
    assert f"line {len(SWITCHERS) * len(NEW) + 1}: not a feedback event" in result.output
    assert not out.exists()


def test_new_clicks_keep_the_ratings_and_the_mean_rating_they_give() -> None:
    """Feedback without stars joins a rated log with NaN ratings, which the mean-rating feature skips
    (dropping the column would blank that feature for every item of the fine-tuned model)."""
    log = Interactions(np.array([0, 0, 1]), np.array([0, 1, 0]), np.array([1, 2, 1]), np.array([4.0, 2.0, 5.0]))
    clicks = Interactions(np.array([0, 1]), np.array([0, 1]), np.array([3, 2]), np.array([np.nan, np.nan]))
    both = merged(log, clicks)
    assert both.user.tolist() == [0, 0, 0, 1, 1]
    assert both.item.tolist() == [0, 1, 0, 0, 1]
    assert both.rating is not None
    np.testing.assert_array_equal(both.rating, [4.0, 2.0, np.nan, 5.0, np.nan])
    mean = _train_mean_rating(TrainData(both, 2, 2), both.rating, 2)
    np.testing.assert_allclose(mean, [4.5, 2.0])
