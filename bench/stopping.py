"""Early-stopping rules for the sequential models (LLM4Rec, SASRec-CE), replayed on recorded curves.

    python bench/stopping.py --dataset ../shared/data/ml-100k --seeds 0,1,2 [--epochs 80] [--models llm4rec,sasrec]

Each (model, seed) trains once for `--epochs` epochs, validating every epoch and scoring the test set
at every epoch as well (no rule sees the test scores; they show what a rule's choice is worth).
Evaluation draws no random numbers, so a run stopped by any rule follows the same trajectory up to
its stop: every rule (validation interval, patience) is replayed exactly on the one recorded curve.
Curves are kept in bench/results/stopping-<dataset>.json, so seeds can run in separate processes;
the table and chart show every stored curve. Rewrites the `stopping-<dataset>` section of
BENCHMARKS.md; chart: bench/figures/stopping-<dataset>.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib
import numpy as np
import torch
from markdown_sections import RESULTS, command_line, machine, write_section

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from models.scoring import Trainable, TrainData
from recdata import load_dataset
from training.ablation import DEFAULT
from training.checkpoint import build_model
from training.evaluate import EvalContext, evaluate
from training.experiment import RunConfig, make_split
from training.fit import FitConfig, fit, seed_everything
from training.zoo import BASELINES, SEQUENTIAL_FIT

FIGURES = Path(__file__).resolve().parent / "figures"
CACHE = Path(".cache/text-embeddings")
RULES = [(every, patience) for every in (1, 2, 5) for patience in (1, 2, 3, 4, 6, 8)]
Curve = dict[str, list[float]]  # valid, test (NDCG@10), test_hr (HR@10), seconds (cumulative wall time)


def label(model_name: str, average: float) -> str:
    return f"{model_name}, weights averaged ({average:g})" if average else model_name


def record(model_name: str, dataset: Path, seed: int, epochs: int, average: float) -> Curve:
    """Train for `epochs` epochs, scoring validation and test after every one (with `average`, the
    moving average of the weights `fit` validates)."""
    data = load_dataset(str(dataset))
    split = make_split(data, RunConfig(seed=seed))
    train = TrainData(split.train, split.num_users, split.num_items)
    ctx = EvalContext.build(data, train)
    seed_everything(seed)  # as training.experiment and training.llm4rec_train seed before building
    model: Trainable = (
        build_model(data, train, DEFAULT, CACHE, progress=False)  # type: ignore[assignment]
        if model_name == "llm4rec"
        else BASELINES[model_name].build(train)
    )
    curve: Curve = {"valid": [], "test": [], "test_hr": [], "seconds": []}
    start = time.perf_counter()

    def on_validation(epoch: int, ndcg: float) -> None:
        m = evaluate(model, split.test, ctx, ks=(10,), beyond=False)
        curve["valid"].append(ndcg)
        curve["test"].append(m["NDCG@10"])
        curve["test_hr"].append(m["HR@10"])
        curve["seconds"].append(time.perf_counter() - start)

    fc = FitConfig(max_epochs=epochs, eval_every=1, patience=epochs + 1, seed=seed, weight_average=average)
    fit(model, train, split.valid, ctx, fc, progress=True, on_validation=on_validation)
    return curve


def replay(valid: list[float], every: int, patience: int) -> tuple[int, int, bool]:
    """(chosen epoch, stopping epoch, whether the curve ended before the rule stopped), 1-based. Like
    `fit` at its last epoch, the curve's last epoch is validated whatever the interval."""
    n = len(valid)
    best, chosen, stale = -np.inf, 0, 0
    for epoch in [*range(every, n + 1, every), *([n] if n % every else [])]:
        if valid[epoch - 1] > best:
            best, chosen, stale = valid[epoch - 1], epoch, 0
        else:
            stale += 1
        if stale >= patience:
            return chosen, epoch, False
    return chosen, n, True


def table(curves: dict[str, dict[str, Curve]]) -> str:
    models = list(curves)
    head = "| validate every | patience | " + " | ".join(
        f"{m} test NDCG@10 | {m} epochs run" for m in models
    ) + " |"  # fmt: skip
    lines = [head, "|---|---" + "|---|---" * len(models) + "|"]
    for every, patience in RULES:
        cells, cut = [], False
        for m in models:
            tests, stops = [], []
            for c in curves[m].values():
                chosen, stop, ended = replay(c["valid"], every, patience)
                tests.append(c["test"][chosen - 1])
                stops.append(stop)
                cut |= ended
            cells += [f"{np.mean(tests):.4f} ± {np.std(tests, ddof=1) if len(tests) > 1 else 0:.4f}",
                      f"{np.mean(stops):.0f}"]  # fmt: skip
        current = (every, patience) == (SEQUENTIAL_FIT.eval_every, SEQUENTIAL_FIT.patience)
        interval = f"**{every}**" if current else str(every)
        lines.append(f"| {interval} | {patience}{' (curve ended first)' if cut else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(curves: dict[str, dict[str, Curve]]) -> str:
    out = []
    for m, runs in curves.items():
        seeds = sorted(runs, key=int)
        cs = [runs[s] for s in seeds]
        chosen = [int(np.argmax(c["valid"])) for c in cs]
        picked = np.mean([c["test"][j] for c, j in zip(cs, chosen, strict=True)])
        gap = np.mean([c["valid"][j] - c["test"][j] for c, j in zip(cs, chosen, strict=True)])
        # the curves' second half: where they have levelled off
        level = np.mean([np.mean(np.subtract(c["valid"], c["test"])[len(c["valid"]) // 2 :]) for c in cs])
        per_epoch = np.mean([c["seconds"][-1] / len(c["seconds"]) for c in cs])
        best = np.mean([max(c["test"]) for c in cs])
        out.append(f"- {m}, seeds {', '.join(seeds)}: {per_epoch:.1f} s per epoch (training, then scoring validation "
                   f"and test). The best test NDCG@10 at any epoch averages {best:.4f} "
                   f"(no rule can choose it). The epoch with the best validation over the whole curve scores "
                   f"{picked:.4f} on test, {gap:.4f} below its validation score; over the curves' second half "
                   f"validation is above test by {level:.4f} on average, so that much of the gap is "
                   "the validation targets being easier, the rest is selection.")  # fmt: skip
    return "\n".join(out)


def chart(curves: dict[str, dict[str, Curve]], name: str) -> Path:
    cols = min(2, len(curves))
    rows = -(-len(curves) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(curves) :]:
        ax.set_visible(False)
    for ax, (m, runs) in zip(axes.flat, curves.items(), strict=False):
        for seed in sorted(runs, key=int):
            c = runs[seed]
            x = np.arange(1, len(c["valid"]) + 1)
            (line,) = ax.plot(x, c["valid"], lw=1, label=f"seed {seed} validation")
            ax.plot(x, c["test"], lw=1, ls="--", color=line.get_color(), label=f"seed {seed} test")
        ax.set_title(f"{m}: NDCG@10 by epoch")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    FIGURES.mkdir(exist_ok=True)
    path = FIGURES / f"stopping-{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--models", default="llm4rec,sasrec", help="'' re-renders the stored curves")
    p.add_argument("--epochs", type=int, default=80)
    p.add_argument("--weight-average", type=float, default=SEQUENTIAL_FIT.weight_average,
                   help="decay of the weights' moving average (0: off); default: the models' schedule")  # fmt: skip
    args = p.parse_args()
    torch.set_num_threads(1)  # so that seeds can run side by side, one per core
    name = args.dataset.name
    store = RESULTS / f"stopping-{name}.json"
    curves: dict[str, Any] = json.loads(store.read_text()) if store.exists() else {}
    for m in filter(None, args.models.split(",")):
        for seed in (int(s) for s in args.seeds.split(",") if s):
            curve = record(m, args.dataset, seed, args.epochs, args.weight_average)
            curves.setdefault(label(m, args.weight_average), {})[str(seed)] = curve
            RESULTS.mkdir(exist_ok=True)
            store.write_text(json.dumps(curves))
    figure = chart(curves, name)
    body = (f"## Early stopping on {name}\n\nCommand: `{command_line()}`. Machine: {machine()}, one torch thread "
            f"per run.\n\n{__doc__.split(chr(10) + chr(10))[2]}\n\nMean ± sample std over the seeds. The rule in "
            f"bold is the current schedule of both models.\n\n{table(curves)}\n\n{summary(curves)}\n\nChart: "
            f"[{figure.name}](bench/figures/{figure.name})\n")  # fmt: skip
    print(body)
    write_section(f"stopping-{name}", body)


if __name__ == "__main__":
    main()
