"""Which SASRec-CE setting matters: each row changes the default SASRecConfig / training budget and is
trained over seeds on full-ranking leave-one-out.

    python bench/sasrec_settings.py --dataset ../shared/data/ml-100k --seeds 0,1,2

Rewrites the `sasrec-settings-<dataset>` section of BENCHMARKS.md (9 settings x 3 seeds: about 80 minutes
on ml-100k on the 2 cores).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from markdown_sections import command_line, write_section

from models.baselines.sasrec import SASRec, SASRecConfig
from recdata import load_dataset
from training import zoo
from training.experiment import RunConfig, make_split, test_metrics, train_baseline
from training.fit import FitConfig

DEFAULT = SASRecConfig()
PREVIOUS = replace(DEFAULT, max_len=200, batch_size=128, xavier=False, layout="pre-norm", length_buckets=True)
VARIANTS: dict[str, tuple[SASRecConfig, FitConfig]] = {
    "default (SASRec block, Xavier init, windows over whole histories, max length 50, batch 64 drawn at random, "
    "validate every 5, patience 3)": (DEFAULT, zoo.SEQUENTIAL_FIT),
    "previous default (pre-norm block, N(0, 0.02) init, max length 200, batches of similar length, batch 128, "
    "every 2, patience 5)": (PREVIOUS, replace(zoo.SEQUENTIAL_FIT, eval_every=2, patience=5)),
    "batches of windows of similar length": (replace(DEFAULT, length_buckets=True), zoo.SEQUENTIAL_FIT),
    "newest 50 items only (the reference's rule)": (replace(DEFAULT, newest_only=True), zoo.SEQUENTIAL_FIT),
    "pre-norm block": (replace(DEFAULT, layout="pre-norm"), zoo.SEQUENTIAL_FIT),
    "N(0, 0.02) init": (replace(DEFAULT, xavier=False), zoo.SEQUENTIAL_FIT),
    "max length 200": (replace(DEFAULT, max_len=200), zoo.SEQUENTIAL_FIT),
    "dropout 0.3": (replace(DEFAULT, dropout=0.3), zoo.SEQUENTIAL_FIT),
    "patience 8": (DEFAULT, replace(zoo.SEQUENTIAL_FIT, patience=8)),
}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--seeds", default="0,1,2")
    args = p.parse_args()
    data = load_dataset(args.dataset)
    seeds = [int(s) for s in args.seeds.split(",")]
    lines = ["| setting | NDCG@10 per seed | NDCG@10 mean | HR@10 mean |", "|---|---|---|---|"]
    for label, (config, fit) in VARIANTS.items():
        entry = zoo.Entry(lambda d, c=config: SASRec(d.num_items, c), fit)
        runs = []
        for seed in seeds:
            cfg = RunConfig(seed=seed, progress=False)
            split = make_split(data, cfg)
            runs.append(test_metrics(train_baseline("sasrec", data, split, cfg, entry), split, cfg))
            print(f"{label} seed {seed}: NDCG@10 {runs[-1]['NDCG@10']:.4f}", flush=True)
        ndcg = [r["NDCG@10"] for r in runs]
        lines.append(f"| {label} | {', '.join(f'{x:.4f}' for x in ndcg)} | {np.mean(ndcg):.4f} | "
                     f"{np.mean([r['HR@10'] for r in runs]):.4f} |")  # fmt: skip
    body = f"## SASRec-CE settings on {data.name}\n\nCommand: `{command_line()}`\n\n" + "\n".join(lines) + "\n"
    print(body)
    write_section(f"sasrec-settings-{data.name}", body)


if __name__ == "__main__":
    main()
