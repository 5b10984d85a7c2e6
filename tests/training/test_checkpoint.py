"""The serving loader: the same model as the evaluation loader (which re-splits the dataset), from the
checkpoint's own training interactions, without importing the training loop."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from tests.conftest import SmallTrained
from training.checkpoint import TRAIN_LOG, CheckpointMismatchError, checkpoint_version, load_serving_checkpoint
from training.experiment import open_checkpoint

ROOT = Path(__file__).resolve().parents[2]
ORCHESTRATION = ("training.experiment", "training.fit", "training.evaluate", "training.zoo", "training.llm4rec_train")


def test_the_serving_loader_matches_the_evaluation_loader(checkpoint: Path, small_trained: SmallTrained) -> None:
    served = load_serving_checkpoint(checkpoint, small_trained.cache)
    opened = open_checkpoint(checkpoint, small_trained.cache)
    with torch.no_grad():
        torch.testing.assert_close(served.model.item_vectors(), opened.model.item_vectors())
    for column in ("user", "item", "timestamp"):
        np.testing.assert_array_equal(getattr(served.train.log, column), getattr(opened.train.log, column))
    np.testing.assert_array_equal(served.train.popularity(), opened.train.popularity())
    assert (served.train.num_users, served.train.num_items) == (opened.train.num_users, opened.train.num_items)
    assert served.data.fingerprint() == opened.data.fingerprint()
    assert served.model.serve_gamma == opened.model.serve_gamma
    assert served.version == checkpoint_version(checkpoint)
    assert served.meta == opened.meta


def test_the_serving_loader_and_the_learner_import_no_training_orchestration(
    checkpoint: Path, small_trained: SmallTrained
) -> None:
    code = (
        "import sys; from pathlib import Path; import learner.build; "
        "from training.checkpoint import load_serving_checkpoint; "
        f"ck = load_serving_checkpoint(Path({str(checkpoint)!r}), Path({str(small_trained.cache)!r})); "
        "assert ck.model.item_vectors()[0].shape[0] == ck.data.num_items; "
        f"loaded = [m for m in {ORCHESTRATION!r} if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_checkpoint_without_its_training_log_is_loaded_from_the_split_it_recorded(
    checkpoint: Path, small_trained: SmallTrained, tmp_path: Path
) -> None:
    """Checkpoints written before the training log was saved (format 1) still serve."""
    old = tmp_path / "old"
    shutil.copytree(checkpoint, old)
    (old / TRAIN_LOG).unlink()
    served = load_serving_checkpoint(old, small_trained.cache)
    np.testing.assert_array_equal(served.train.log.item, small_trained.split.train.item)
    with torch.no_grad():
        torch.testing.assert_close(served.model.item_vectors(), small_trained.model.item_vectors())


def test_a_training_log_that_does_not_fit_the_dataset_is_refused(
    checkpoint: Path, small_trained: SmallTrained, tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(checkpoint, bad)
    cols = load_file(str(bad / TRAIN_LOG))
    cols["item"] = cols["item"] + small_trained.data.num_items
    save_file(cols, str(bad / TRAIN_LOG))
    with pytest.raises(CheckpointMismatchError, match="outside dataset"):
        load_serving_checkpoint(bad, small_trained.cache)
