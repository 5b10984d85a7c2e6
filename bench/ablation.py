"""Ablation of LLM4Rec's components (the paper's Table IV), full-ranking leave-one-out, over seeds.

    python bench/ablation.py --dataset ../shared/data/ml-100k --seeds 0,1,2

Prints the table (mean ± sample std over seeds, and the paired NDCG@10 difference to the default
model) and rewrites the `ablation-<dataset>` section of BENCHMARKS.md. Each (variant, seed) result is
kept in bench/results/ablation-<dataset>.json, so `--variants` and `--seeds` re-run only some cells.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from markdown_sections import command_line, keep_cell, load_cells, write_section

from models.splits import leave_one_out
from recdata import load_dataset
from training.ablation import VARIANTS, run_ablation
from training.experiment import RunConfig

KEYS = ("HR@10", "NDCG@10", "Coverage@100", "ARP@10", "train_seconds", "best_epoch")
BASE = "default"


def table(kept: dict[str, dict[str, dict[str, float]]]) -> str:
    """Rows: variants; cells: mean ± std over the seeds each variant has; last column: mean paired
    NDCG@10 difference to the default model on the seeds both have."""
    lines = ["| variant | seeds | " + " | ".join(KEYS) + " | ΔNDCG@10 vs default |", "|---" * (len(KEYS) + 3) + "|"]
    base = kept.get(BASE, {})
    for name in (v for v in VARIANTS if v in kept):
        runs = kept[name]
        cells = []
        for k in KEYS:
            xs = np.array([r[k] for r in runs.values()])
            cells.append(f"{xs.mean():.4f} ± {xs.std(ddof=1) if len(xs) > 1 else 0:.4f}" if xs.mean() < 100
                         else f"{xs.mean():.0f}")  # fmt: skip
        paired = [runs[s]["NDCG@10"] - base[s]["NDCG@10"] for s in runs if s in base]
        delta = f"{np.mean(paired):+.4f}" if paired and name != BASE else "-"
        lines.append(f"| {name} | {','.join(sorted(runs))} | " + " | ".join(cells) + f" | {delta} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args()
    data = load_dataset(args.dataset)
    split = leave_one_out(data)
    store = f"ablation-{data.name}"
    kept = load_cells(store)
    for seed in (int(s) for s in args.seeds.split(",")):
        cfg = RunConfig(seed=seed, progress=False)
        for name in args.variants.split(","):
            metrics = run_ablation(data, split, [name], cfg, Path(".cache/text-embeddings"))[name]
            keep_cell(store, kept, name, seed, metrics)
            print(f"{name} seed {seed}: NDCG@10 {metrics['NDCG@10']:.4f}", flush=True)
    text = table(kept)
    print(text)
    body = (f"## Ablation on {data.name}\n\nEvery (variant, seed) cell kept in `bench/results/{store}.json`; "
            f"the latest command: `{command_line()}` (full-ranking leave-one-out; mean ± sample std over the "
            "seeds listed per row; Δ is the mean paired difference to the default model).\n\n" + text)  # fmt: skip
    write_section(f"ablation-{data.name}", body)


if __name__ == "__main__":
    main()
