"""Building, training and checkpointing the LLM4Rec model; the ablation switches live here.

Checkpoints are a folder: `model.safetensors` (weights, no pickle) and `config.json` (model config,
feature switches, dataset name and fingerprint, serving gamma). Loading one against a dataset with
another fingerprint fails with `CheckpointMismatchError`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from models.data import RecDataset
from models.fusion import FusionConfig
from models.llm4rec import LLM4Rec, LLM4RecConfig
from models.scoring import TrainData
from models.splits import Split
from training.evaluate import EvalContext, evaluate
from training.features import FeatureOptions, item_inputs, user_groups
from training.fit import FitConfig, FitResult, fit, seed_everything

GAMMA_MULTIPLIERS = (0.0, 0.5, 1.0, 1.5)  # serving gamma candidates, as multiples of the learned one


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
    adaptive_weights: bool = True
    ipw: bool = True
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


def select_serving_gamma(model: LLM4Rec, split: Split, ctx: EvalContext) -> float:
    """PDA's adjusted inference: the popularity weight that serves validation best."""
    learned = float(model.gamma.detach())
    best, best_ndcg = learned, -1.0
    for m in GAMMA_MULTIPLIERS if model.config.pop_deconfound else (1.0,):
        model.serve_gamma = m * learned
        ndcg = evaluate(model, split.valid, ctx, ks=(10,), beyond=False)["NDCG@10"]
        if ndcg > best_ndcg:
            best, best_ndcg = m * learned, ndcg
    model.serve_gamma = best
    return best


@dataclass(frozen=True)
class TrainedLLM4Rec:
    model: LLM4Rec
    ctx: EvalContext
    fit: FitResult
    seconds: float


def train_llm4rec(data: RecDataset, split: Split, sw: Switches, fc: FitConfig, cache_dir: Path,
                  progress: bool = True, base: LLM4RecConfig | None = None) -> TrainedLLM4Rec:  # fmt: skip
    train = TrainData(split.train, split.num_users, split.num_items)
    ctx = EvalContext.build(data, train)
    seed_everything(fc.seed)
    start = time.perf_counter()
    model = build_model(data, train, sw, cache_dir, progress, base)
    result = fit(model, train, split.valid, ctx, fc, progress=progress)
    select_serving_gamma(model, split, ctx)
    return TrainedLLM4Rec(model, ctx, result, time.perf_counter() - start)


def save_checkpoint(out: Path, model: LLM4Rec, data: RecDataset, sw: Switches, extra: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    meta = {"format": 1, "dataset": data.name, "fingerprint": data.fingerprint(), "model": model.config.to_dict(),
            "switches": asdict(sw), "serve_gamma": model.serve_gamma, **extra}  # fmt: skip
    (out / "config.json").write_text(json.dumps(meta, indent=2))


def read_checkpoint_meta(path: Path) -> dict[str, Any]:
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise CheckpointMismatchError(f"{path} is not a checkpoint (needs config.json and model.safetensors)")
    meta: dict[str, Any] = json.loads((path / "config.json").read_text())
    return meta


def load_checkpoint(path: Path, data: RecDataset, train: TrainData, cache_dir: Path) -> LLM4Rec:
    meta = read_checkpoint_meta(path)
    if meta["fingerprint"] != data.fingerprint():
        raise CheckpointMismatchError(
            f"checkpoint {path} was trained on dataset {meta['dataset']!r} (fingerprint {meta['fingerprint']}), "
            f"not on {data.name!r} (fingerprint {data.fingerprint()})"
        )
    sw = Switches(**meta["switches"])
    model = build_model(data, train, sw, cache_dir, progress=False, base=LLM4RecConfig.from_dict(meta["model"]))
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    model.serve_gamma = meta["serve_gamma"]
    model.eval()
    return model
