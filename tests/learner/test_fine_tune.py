"""Periodic fine-tune bookkeeping: pending feedback survives restarts and failed fine-tunes, a torn
last line is cut, and what a kill leaves half done (taken events, a folder exchange) is recovered."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from common.events import FeedbackEvent
from learner.fine_tune import PENDING, PendingFeedback, exchange, recover
from service.settings import Settings
from training.checkpoint import WEIGHTS


def _events(n: int, user: str = "u1") -> list[FeedbackEvent]:
    return [FeedbackEvent(event_id=uuid.uuid4().hex, user_id=user, item_id=f"m{k}", type="click")  # type: ignore[arg-type]
            for k in range(n)]  # fmt: skip


def test_pending_feedback_survives_a_restart_and_a_failed_fine_tune_gives_it_back(tmp_path: Path) -> None:
    pending = PendingFeedback(tmp_path)
    pending.append(_events(3))
    taken = pending.take("v1")
    pending.append(_events(2, "u2"))  # arrived during the fine-tune
    assert PendingFeedback(tmp_path).count == 2  # a restart counts what is on disk
    pending.give_back(taken)
    assert pending.count == 5
    assert not taken.exists()
    users = [FeedbackEvent.model_validate_json(line).user_id for line in (tmp_path / PENDING).read_text().splitlines()]
    assert users == ["u1"] * 3 + ["u2"] * 2  # the older events first


def test_a_torn_last_line_is_cut_at_start(tmp_path: Path) -> None:
    PendingFeedback(tmp_path).append(_events(2))
    with (tmp_path / PENDING).open("ab") as f:
        f.write(b'{"user_id": "u1", "item_')  # a kill in the middle of an append
    again = PendingFeedback(tmp_path)
    assert again.count == 2
    again.append(_events(1))
    assert len([FeedbackEvent.model_validate_json(x) for x in (tmp_path / PENDING).read_bytes().splitlines()]) == 3


def test_recover_gives_back_what_did_not_land_and_drops_what_did(tmp_path: Path) -> None:
    pending = PendingFeedback(tmp_path)
    pending.append(_events(4))
    pending.take("served")  # killed during the fine-tune of the served model
    pending.append(_events(1))
    pending.take("older")  # killed after a fine-tune from "older" landed (the served model holds them)
    pending.append(_events(2))
    pending.recover("served")
    assert pending.count == 6
    assert not list(tmp_path.glob("taken-*"))


def test_recover_puts_back_a_model_folder_cut_between_the_two_renames(checkpoint: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(checkpoint, model.with_name("model.previous"))  # exchange killed after its first rename
    recover(Settings(model_dir=model, state_dir=tmp_path / "state"))
    assert (model / WEIGHTS).is_file()
    assert not model.with_name("model.previous").exists()
    new = tmp_path / "new"
    shutil.copytree(checkpoint, new)
    (new / "marker").write_text("new")
    exchange(new, model)
    assert (model / "marker").is_file()
    assert not new.exists()
    assert not model.with_name("model.previous").exists()
