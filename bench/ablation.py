"""Ablation of LLM4Rec's components (the paper's Table IV), full-ranking leave-one-out, one seed.

    python bench/ablation.py --dataset ../shared/data/ml-100k

Prints the table and rewrites the `ablation-<dataset>` section of BENCHMARKS.md. Each variant's figures
are kept in bench/results/ablation-<dataset>.json, so `--variants` re-runs only some rows of the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from markdown_sections import write_section

from models.splits import leave_one_out
from recdata import load_dataset
from training.ablation import VARIANTS, run_ablation
from training.experiment import RunConfig
from training.report import markdown_table

KEYS = ("HR@10", "NDCG@10", "MRR", "Coverage@100", "LongTail@10", "ARP@10", "train_seconds", "best_epoch")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args()
    data = load_dataset(args.dataset)
    split = leave_one_out(data)
    cfg = RunConfig(seed=args.seed, progress=False)
    store = Path(__file__).resolve().parent / "results" / f"ablation-{data.name}.json"
    kept = json.loads(store.read_text()) if store.exists() else {}
    kept.update(run_ablation(data, split, args.variants.split(","), cfg, Path(".cache/text-embeddings")))
    store.parent.mkdir(exist_ok=True)
    store.write_text(json.dumps(kept, indent=1))
    table = markdown_table({v: kept[v] for v in VARIANTS if v in kept}, KEYS)
    print(table)
    body = (f"## Ablation on {data.name}\n\nCommand: `python bench/ablation.py {' '.join(sys.argv[1:])}` "
            f"(seed {args.seed}; one seed, so differences under about the seed spread reported above are noise).\n\n"
            + table)  # fmt: skip
    write_section(f"ablation-{data.name}", body)


if __name__ == "__main__":
    main()
