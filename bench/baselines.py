"""Baselines on full-ranking leave-one-out (and the sampled protocols for comparison with papers).

    python bench/baselines.py --dataset ml-latest-small --dataset ../shared/data/ml-100k

Prints a table per dataset and protocol, and rewrites the `baselines` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from markdown_sections import command_line, machine, write_section

from recdata import load_dataset
from training.experiment import RunConfig, make_split, test_metrics, train_baseline
from training.report import markdown_table, write_report
from training.zoo import BASELINES

FIGURES = Path(__file__).resolve().parent / "figures"
COLUMNS = ("HR@10", "NDCG@10", "MRR", "Coverage@100", "LongTail@10", "ARP@10", "train_seconds", "best_epoch")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", action="append", required=True)
    p.add_argument("--models", default=",".join(BASELINES))
    p.add_argument("--protocols", default="full,sampled-uniform,sampled-pop")
    p.add_argument("--out", type=Path, default=Path("results/bench"), help="results.json/md per dataset")
    args = p.parse_args()
    where = f"{machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    parts = [
        f"## Baselines\n\nCommand: `{command_line()}`  \nMachine: {where}. "
        "Leave-one-out by time, seed 0; each model is trained and selected once per dataset, the protocols "
        "only change how its test targets are ranked.\n"
    ]
    for ds in args.dataset:
        data = load_dataset(ds)
        split = make_split(data, RunConfig())
        results: dict[str, dict[str, dict[str, float]]] = {pr: {} for pr in args.protocols.split(",")}
        for name in args.models.split(","):
            trained = train_baseline(name, data, split, RunConfig())
            for pr in results:
                results[pr][name] = test_metrics(trained, split, RunConfig(protocol=pr))
                print(f"{data.name} {name} {pr}: {results[pr][name]}", flush=True)
        size = f"{data.num_users} users, {data.num_items} items, {len(data.interactions)} interactions"
        parts.append(f"### {data.name} ({size})\n\n" + markdown_table(results["full"], COLUMNS))
        write_report(
            args.out / data.name, results["full"], {"dataset": data.name, "split": "leave-one-out", "protocol": "full"}
        )
        FIGURES.mkdir(exist_ok=True)
        shutil.copy(args.out / data.name / "results.png", FIGURES / f"baselines-{data.name}.png")
        parts.append(f"Chart: [baselines-{data.name}.png](bench/figures/baselines-{data.name}.png)\n")
        for pr in (p for p in results if p != "full"):
            parts.append(
                f"{data.name}, protocol {pr} (1 target + 99 sampled negatives):\n\n"
                + markdown_table(results[pr], ("HR@10", "NDCG@10", "MRR"))
            )
    write_section("baselines", "\n".join(parts))


if __name__ == "__main__":
    main()
