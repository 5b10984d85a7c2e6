"""The LLM4Rec checkpoint format, and rebuilding a model from it without the training loop.

A checkpoint is a folder: `model.safetensors` (weights, no pickle), `train.safetensors` (the training
interactions: user, item, timestamp and, when the dataset has them, rating columns) and `config.json`
(model config, feature switches, dataset reference and fingerprint, serving gamma). Loading one against
a dataset with another fingerprint fails with `CheckpointMismatchError`.

The model's item features (rating statistics, the items known to the id embedding) and its popularity
prior are computed from the training interactions, so loading needs them; the checkpoint carries them
so that serving and the learner start from the checkpoint and the dataset alone
(`load_serving_checkpoint`), the way vLLM loads weights and config without the training loop. This
module imports no training orchestration (fitting, evaluation, experiments).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
from safetensors.numpy import load_file as load_arrays
from safetensors.numpy import save_file as save_arrays
from safetensors.torch import load as load_weights
from safetensors.torch import load_file, save_file

from models.data import Interactions, RecDataset
from models.fusion import FusionConfig
from models.llm4rec import LLM4Rec, LLM4RecConfig
from models.scoring import TrainData
from models.splits import Split, implicit, leave_one_out, temporal
from recdata import load_dataset
from training.features import FeatureOptions, item_inputs, user_groups

log = structlog.get_logger()

FORMAT = 2  # 2: the training interactions travel in train.safetensors (1: rebuilt by re-splitting)
WEIGHTS, TRAIN_LOG, META = "model.safetensors", "train.safetensors", "config.json"
SPLITS = ("leave-one-out", "temporal")


class CheckpointMismatchError(ValueError):
    pass


@dataclass(frozen=True)
class Switches:
    """Ablation switches: every component of the full model can be turned off."""

    fusion: bool = True  # off: item vectors from the id embedding only (a SASRec-like model)
    text: bool = True
    categorical: bool = True
    numerical: bool = True
    ids: bool = True
    cross_attention: bool = True
    # off by default: each cost validation and test NDCG@10 on ml-100k over 3 seeds (BENCHMARKS.md,
    # ablation); the paper's eq. 5-6 softmax weights and eq. 13-14 IPW stay available as switches
    adaptive_weights: bool = False
    ipw: bool = False
    pop_deconfound: bool = True
    fair: bool = True
    lambda_fair: float = 0.1
    lambda_parity: float = 0.0  # per-group loss-gap penalty (off in the full model; see bench/llm4rec.py)


def build_model(data: RecDataset, train: TrainData, sw: Switches, cache_dir: Path, progress: bool = True,
                base: LLM4RecConfig | None = None) -> LLM4Rec:  # fmt: skip
    content = sw.fusion
    opts = FeatureOptions(
        sw.text and content, sw.categorical and content, sw.numerical and content, cache_dir, progress
    )
    items = item_inputs(data, train, opts)
    groups, num_groups = user_groups(data)
    fusion = FusionConfig(
        text_dim=items.text.shape[1] if items.text is not None else 0,
        categorical_sizes=tuple(len(f.vocab) for f in data.item_categorical.values()) if opts.categorical else (),
        num_numerical=items.numerical.shape[1] if items.numerical is not None else 0,
        num_items=data.num_items if sw.ids or not content else 0,
        cross_attention=sw.cross_attention,
        adaptive_weights=sw.adaptive_weights,
        id_dropout=0.1 if content else 0.0,
    )
    base = base or LLM4RecConfig()
    fair = sw.fair and num_groups > 1 and (sw.lambda_fair > 0 or sw.lambda_parity > 0)
    config = replace(base, fusion=replace(fusion, dim=base.fusion.dim), ipw=sw.ipw, pop_deconfound=sw.pop_deconfound,
                     lambda_fair=sw.lambda_fair if fair else 0.0,
                     lambda_parity=sw.lambda_parity if fair else 0.0, num_groups=num_groups if fair else 0)  # fmt: skip
    activity = torch.bincount(torch.from_numpy(train.log.user), minlength=data.num_users)
    return LLM4Rec(config, items, torch.from_numpy(train.popularity()), activity, groups)


def split_dataset(data: RecDataset, split: str, min_rating: float | None) -> Split:
    """The evaluation split a run trains on (`llm4rec train --split`, `--min-rating`)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data = implicit(data, min_rating)
    return leave_one_out(data) if split == "leave-one-out" else temporal(data)


def save_checkpoint(out: Path, model: LLM4Rec, data: RecDataset, train_log: Interactions, sw: Switches,
                    extra: dict[str, Any]) -> None:  # fmt: skip
    """`train_log`: the interactions the model was trained on (a split's `train`)."""
    out.mkdir(parents=True, exist_ok=True)
    columns = {"user": train_log.user, "item": train_log.item, "timestamp": train_log.timestamp}
    if train_log.rating is not None:
        columns["rating"] = train_log.rating
    save_arrays({k: np.ascontiguousarray(v) for k, v in columns.items()}, str(out / TRAIN_LOG))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS))
    meta = {"format": FORMAT, "dataset": data.name, "fingerprint": data.fingerprint(), "model": model.config.to_dict(),
            "switches": asdict(sw), "serve_gamma": model.serve_gamma, **extra}  # fmt: skip
    (out / META).write_text(json.dumps(meta, indent=2))  # last: a folder with config.json is complete


def read_checkpoint_meta(path: Path) -> dict[str, Any]:
    if not (path / META).is_file() or not (path / WEIGHTS).is_file():
        raise CheckpointMismatchError(f"{path} is not a checkpoint (needs {META} and {WEIGHTS})")
    meta: dict[str, Any] = json.loads((path / META).read_text())
    return meta


def checkpoint_version(path: Path) -> str:
    """A checkpoint's identity (its weights' hash): adapters name the model they were trained for."""
    return _version((Path(path) / WEIGHTS).read_bytes())


def _version(weights: bytes) -> str:
    return hashlib.sha256(weights).hexdigest()[:12]


def load_checkpoint(path: Path, data: RecDataset, train: TrainData, cache_dir: Path) -> LLM4Rec:
    meta = read_checkpoint_meta(path)
    _check_dataset(path, meta, data)
    return _model(load_file(str(path / WEIGHTS)), meta, data, train, cache_dir)


@dataclass(frozen=True)
class ServingCheckpoint:
    """What serving and the learner need from a checkpoint: the model in eval mode with its serving
    gamma, the dataset it was trained on, the training interactions (item popularity, training
    sequences, features for items added later), config.json's contents, and the weights' version."""

    model: LLM4Rec
    data: RecDataset
    train: TrainData
    meta: dict[str, Any]
    version: str  # checkpoint_version(path)


def load_serving_checkpoint(path: Path, cache_dir: Path) -> ServingCheckpoint:
    """Loads the checkpoint with the dataset it names; raises CheckpointMismatchError (not a
    checkpoint, another dataset, a training log that does not fit it) or recdata.DatasetError."""
    meta = read_checkpoint_meta(path)
    data = load_dataset(meta["dataset_ref"])
    _check_dataset(path, meta, data)
    train = TrainData(read_train_log(path, meta, data), data.num_users, data.num_items)
    weights = (path / WEIGHTS).read_bytes()  # read once: the model's state and its version
    model = _model(load_weights(weights), meta, data, train, cache_dir)
    return ServingCheckpoint(model, data, train, meta, _version(weights))


def read_train_log(path: Path, meta: dict[str, Any], data: RecDataset) -> Interactions:
    """The training interactions saved with the checkpoint. A format-1 checkpoint has none: its split is
    rebuilt from the run it recorded (the same deterministic recipe `llm4rec train` used)."""
    if not (path / TRAIN_LOG).is_file():
        log.warning("checkpoint_without_train_log", path=str(path), format=meta.get("format"))
        run = meta["run"]
        return split_dataset(data, run["split"], run["min_rating"]).train
    cols = load_arrays(str(path / TRAIN_LOG))
    train = Interactions(cols["user"], cols["item"], cols["timestamp"], cols.get("rating"))
    if len(train) == 0 or any(len(c) != len(train) for c in cols.values()):
        raise CheckpointMismatchError(f"{path / TRAIN_LOG}: no interactions, or columns of different lengths")
    if not (_within(train.user, data.num_users) and _within(train.item, data.num_items)):
        raise CheckpointMismatchError(f"{path / TRAIN_LOG} names users or items outside dataset {data.name!r}")
    return train


def _within(ids: np.ndarray, n: int) -> bool:
    return bool(ids.min() >= 0 and ids.max() < n)


def _check_dataset(path: Path, meta: dict[str, Any], data: RecDataset) -> None:
    if meta["fingerprint"] != data.fingerprint():
        raise CheckpointMismatchError(
            f"checkpoint {path} was trained on dataset {meta['dataset']!r} (fingerprint {meta['fingerprint']}), "
            f"not on {data.name!r} (fingerprint {data.fingerprint()})"
        )


def _model(state: dict[str, torch.Tensor], meta: dict[str, Any], data: RecDataset, train: TrainData,
           cache_dir: Path) -> LLM4Rec:  # fmt: skip
    sw = Switches(**meta["switches"])
    model = build_model(data, train, sw, cache_dir, progress=False, base=LLM4RecConfig.from_dict(meta["model"]))
    model.load_state_dict(state)
    model.serve_gamma = meta["serve_gamma"]
    model.eval()
    return model
