"""Training runs of the full model on a small dataset with real MiniLM text embeddings, checkpoints
and their dataset check, and the CLI commands around them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from llm4rec.cli import app
from models.scoring import HistoryBatch, TrainData
from models.splits import leave_one_out
from recdata import load_dataset
from tests.llm4rec.test_cli import _small_generic
from training.llm4rec_train import CheckpointMismatchError, Switches, build_model, load_checkpoint, save_checkpoint
from training.text_embeddings import embed_texts

runner = CliRunner()


def test_text_embeddings_are_real_and_cached(tmp_path: Path) -> None:
    texts = ["A space opera with robots", "Robots fight in space", "A quiet romance in Paris"]
    first = embed_texts(texts, tmp_path, progress=False)
    assert first.shape == (3, 384)
    sims = first @ first.T
    assert sims[0, 1] > sims[0, 2]  # a real sentence encoder puts the two space films together
    shards = list(tmp_path.glob("shard-*.safetensors"))
    assert len(shards) == 1
    again = embed_texts([texts[2], texts[0]], tmp_path, progress=False)  # served from the cache
    assert len(list(tmp_path.glob("shard-*.safetensors"))) == 1
    assert (again == first[[2, 0]]).all()


def test_checkpoint_round_trip_and_dataset_check(tmp_path: Path) -> None:
    _small_generic(tmp_path / "data")
    data = load_dataset(tmp_path / "data")
    split = leave_one_out(data)
    train = TrainData(split.train, split.num_users, split.num_items)
    cache = tmp_path / "cache"
    model = build_model(data, train, Switches(), cache, progress=False)
    model.serve_gamma = 0.3
    save_checkpoint(tmp_path / "ckpt", model, data, split.train, Switches(), {"note": "test"})
    loaded = load_checkpoint(tmp_path / "ckpt", data, train, cache)
    batch = HistoryBatch(torch.tensor([0, 1]), torch.tensor([[0, 1, 2], [3, 4, 5]]))
    model.eval()
    torch.testing.assert_close(loaded.score(batch), model.score(batch))
    assert loaded.serve_gamma == 0.3
    assert "pickle" not in (tmp_path / "ckpt" / "model.safetensors").read_bytes()[:200].decode("latin-1")

    other = load_dataset("ml-latest-small")
    other_split = leave_one_out(other)
    with pytest.raises(CheckpointMismatchError, match="was trained on dataset 'small'"):
        load_checkpoint(tmp_path / "ckpt", other, TrainData(other_split.train, other.num_users, other.num_items), cache)


def test_train_then_eval_checkpoint_cli(tmp_path: Path) -> None:
    _small_generic(tmp_path / "data")
    ckpt, cache = tmp_path / "ckpt", tmp_path / "cache"
    args = ["train", "--dataset", str(tmp_path / "data"), "--out", str(ckpt), "--max-epochs", "2"]
    result = runner.invoke(app, [*args, "--cache-dir", str(cache), "--with", "ipw", "--no", "cross-attention"])
    assert result.exit_code == 0, result.output
    meta = json.loads((ckpt / "config.json").read_text())
    assert meta["switches"]["ipw"] is True
    assert meta["switches"]["cross_attention"] is False
    assert (ckpt / "train.safetensors").is_file()  # serving loads the training interactions from here
    assert meta["model"]["fusion"]["text_dim"] == 384
    result = runner.invoke(app, ["eval", "--model", str(ckpt), "--cache-dir", str(cache), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "llm4rec" in json.loads((tmp_path / "r" / "results.json").read_text())["results"]
    bad = runner.invoke(app, ["train", "--out", str(ckpt), "--no", "everything"])
    assert bad.exit_code == 2
    assert "unknown component(s) ['everything']" in bad.output


def test_ablate_cli_writes_a_table(tmp_path: Path) -> None:
    _small_generic(tmp_path / "data")
    out = tmp_path / "ablation"
    args = ["ablate", "--dataset", str(tmp_path / "data"), "--variants", "default,w/o text", "--max-epochs", "2"]
    result = runner.invoke(app, [*args, "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = (out / "results.md").read_text()
    assert "| default |" in table
    assert "| w/o text |" in table


def test_ids_only_variant_scores_items_unseen_in_training(tmp_path: Path) -> None:
    """The ablation's ids-only model has no modality for an item missing from training: its vector must
    be a finite constant, not NaN (NaN scores would make every rank meaningless)."""
    from tests.conftest import make_dataset

    data = make_dataset([[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5]], num_items=7)  # item 6: never seen
    split = leave_one_out(data)
    train = TrainData(split.train, split.num_users, split.num_items)
    model = build_model(data, train, Switches(fusion=False), tmp_path, progress=False)
    model.eval()
    scores = model.score(HistoryBatch(torch.tensor([0]), torch.tensor([[0, 1, 2]])))
    assert torch.isfinite(scores).all()


def test_served_gamma_is_the_candidate_closest_to_zero_within_tolerance() -> None:
    from training.llm4rec_train import smallest_near_best

    ndcg = {0.0: 0.080, 0.5: 0.0985, 0.9: 0.0990, 1.0: 0.1000}
    assert smallest_near_best(ndcg, 0.02) == 0.5  # 0.0985 is within 2% of the best, 0.080 is not
    assert smallest_near_best(ndcg, 0.0) == 1.0
    assert smallest_near_best({-0.4: 0.1, -0.2: 0.1, 0.0: 0.05}, 0.02) == -0.2  # closest to 0, whatever the sign
