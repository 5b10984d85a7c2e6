"""LLM4Rec against SASRec-CE over seeds, the popularity intervention, the fairness trade-off and
cold start, on full-ranking leave-one-out.

    python bench/llm4rec.py --dataset ../shared/data/ml-100k --seeds 0,1,2 --fairness --cold-start
    python bench/llm4rec.py --dataset ml-latest-small --seeds 0,1,2

Prints every figure as it comes and rewrites the `llm4rec-<dataset>` section of BENCHMARKS.md;
charts go to bench/figures/.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib
import numpy as np
from markdown_sections import write_section

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from models.data import RecDataset
from models.splits import Split, leave_one_out
from recdata import load_dataset
from training.ablation import FULL
from training.coldstart import OnlyAmong, cold_eval_set, random_hit_rate, withhold_items
from training.evaluate import evaluate
from training.experiment import RunConfig, llm4rec_fit_config, llm4rec_metrics, test_metrics, train_baseline
from training.llm4rec_train import GAMMA_MULTIPLIERS, TrainedLLM4Rec, train_llm4rec
from training.report import markdown_table

FIGURES = Path(__file__).resolve().parent / "figures"
CACHE = Path(".cache/text-embeddings")
KEYS = ("HR@10", "NDCG@10", "MRR", "Coverage@100", "LongTail@10", "ARP@10")
FAIR_LAMBDAS = (0.0, 0.3, 1.0)  # besides the default 0.1 of the full model


def train(data: RecDataset, split: Split, seed: int, **switches: object) -> TrainedLLM4Rec:
    cfg = RunConfig(seed=seed, progress=False)
    return train_llm4rec(data, split, replace(FULL, **switches), llm4rec_fit_config(cfg), CACHE, progress=False)  # type: ignore[arg-type]


def mean_std(rows: list[dict[str, float]], key: str) -> str:
    xs = np.array([r[key] for r in rows])
    return f"{xs.mean():.4f} ± {xs.std(ddof=1) if len(xs) > 1 else 0.0:.4f}"


def accuracy(data: RecDataset, split: Split, seeds: list[int]) -> tuple[str, TrainedLLM4Rec]:
    runs: dict[str, list[dict[str, float]]] = {"sasrec": [], "llm4rec": []}
    first = None
    for seed in seeds:
        cfg = RunConfig(seed=seed, progress=False)
        runs["sasrec"].append(test_metrics(train_baseline("sasrec", data, split, cfg), split, cfg))
        trained = train(data, split, seed)
        first = first or trained
        runs["llm4rec"].append(llm4rec_metrics(trained, split, cfg))
        print(f"seed {seed}: " + ", ".join(f"{m} NDCG@10 {r[-1]['NDCG@10']:.4f}" for m, r in runs.items()), flush=True)
    lines = ["| model | HR@10 | NDCG@10 | MRR | train seconds | epochs to best |", "|---|---|---|---|---|---|"]
    for m, rows in runs.items():
        lines.append(f"| {m} | {mean_std(rows, 'HR@10')} | {mean_std(rows, 'NDCG@10')} | {mean_std(rows, 'MRR')} | "
                     f"{mean_std(rows, 'train_seconds')} | {mean_std(rows, 'best_epoch')} |")  # fmt: skip
    gain = {
        k: np.mean([a[k] / b[k] - 1 for a, b in zip(runs["llm4rec"], runs["sasrec"], strict=True)])
        for k in ("HR@10", "NDCG@10")
    }
    wins = sum(a["NDCG@10"] > b["NDCG@10"] for a, b in zip(runs["llm4rec"], runs["sasrec"], strict=True))
    text = (f"Mean ± sample std over seeds {seeds}. LLM4Rec vs SASRec-CE, paired by seed: NDCG@10 "
            f"{gain['NDCG@10']:+.1%}, HR@10 {gain['HR@10']:+.1%}; LLM4Rec ahead on NDCG@10 in {wins} of "
            f"{len(seeds)} seeds.\n\n" + "\n".join(lines) + "\n")  # fmt: skip
    assert first is not None
    return text, first


def debiasing(trained: TrainedLLM4Rec, split: Split) -> str:
    model, learned = trained.model, float(trained.model.gamma.detach())
    chosen = model.serve_gamma
    rows = {}
    for m in sorted({*GAMMA_MULTIPLIERS, 0.25}, reverse=True):
        model.serve_gamma = m * learned
        label = f"gamma = {m * learned:.3f} ({m:g} x learned)" + (
            " [validation choice]" if m * learned == chosen else ""
        )
        rows[label] = evaluate(model, split.test, trained.ctx)
    model.serve_gamma = chosen
    return (f"Serving-time do(popularity) on the seed-0 model (learned gamma {learned:.3f}); gamma = 0 removes "
            "popularity's direct effect entirely.\n\n" + markdown_table(rows, KEYS))  # fmt: skip


def fairness(data: RecDataset, split: Split, default: TrainedLLM4Rec, name: str) -> str:
    attr = data.sensitive[0]
    gap_key = f"NDCGGap@10[{attr}]"
    results = {0.1: llm4rec_metrics(default, split, RunConfig(seed=0))}
    for lam in FAIR_LAMBDAS:
        trained = train(data, split, 0, fair=lam > 0, lambda_fair=lam)
        results[lam] = llm4rec_metrics(trained, split, RunConfig(seed=0))
        print(f"lambda_fair {lam}: NDCG@10 {results[lam]['NDCG@10']:.4f}, gap {results[lam][gap_key]:.4f}", flush=True)
    lams = sorted(results)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot([results[x][gap_key] for x in lams], [results[x]["NDCG@10"] for x in lams], "o-")
    for x in lams:
        ax.annotate(f"λ={x:g}", (results[x][gap_key], results[x]["NDCG@10"]), textcoords="offset points", xytext=(5, 5))
    ax.xaxis.set_major_locator(MaxNLocator(5))  # the gaps are small numbers with long tick labels
    ax.set_xlabel(f"NDCG@10 gap between {attr} groups")
    ax.set_ylabel("NDCG@10")
    ax.set_title(f"{name}: fairness adversary trade-off")
    fig.tight_layout()
    FIGURES.mkdir(exist_ok=True)
    path = FIGURES / f"fairness-{name}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    rows = {f"lambda_fair = {x:g}": results[x] for x in lams}
    keys = ("NDCG@10", "HR@10", gap_key, f"ExposureGap@10[{attr}]")
    return f"Adversary on `{attr}`, seed 0. Chart: [{path.name}](bench/figures/{path.name}).\n\n" + markdown_table(
        rows, keys
    )


def cold_start(data: RecDataset, seed: int = 0) -> str:
    warm, cold = withhold_items(data, frac=0.1, min_count=5, seed=seed)
    split = leave_one_out(warm)
    trained = train(warm, split, seed)
    es = cold_eval_set(data, cold)
    out = evaluate(OnlyAmong(trained.model, cold, data.num_items), es, trained.ctx, ks=(10,), beyond=False)
    chance = random_hit_rate(es, len(cold), 10)
    return (f"{len(cold)} items (10% of those with >= 5 interactions) withheld from training; {len(es)} users rank "
            f"them by content-only vectors given their warm history.\n\n| | HR@10 | Recall@10 |\n|---|---|---|\n"
            f"| LLM4Rec, content-only vectors | {out['HR@10']:.4f} | {out['Recall@10']:.4f} |\n"
            f"| random ranking (exact expectation) | {chance:.4f} | {min(1.0, 10 / len(cold)):.4f} |\n")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--fairness", action="store_true")
    p.add_argument("--cold-start", action="store_true")
    args = p.parse_args()
    data = load_dataset(args.dataset)
    split = leave_one_out(data)
    seeds = [int(s) for s in args.seeds.split(",")]
    parts = [f"## LLM4Rec on {data.name}\n\nCommand: `python bench/llm4rec.py {' '.join(sys.argv[1:])}`\n"]
    text, first = accuracy(data, split, seeds)
    parts += ["### Accuracy against SASRec-CE\n", text, "### Popularity intervention\n", debiasing(first, split)]
    print(parts[-1], flush=True)
    if args.fairness and data.sensitive:
        parts += ["### Fairness trade-off\n", fairness(data, split, first, data.name)]
    if args.cold_start:
        parts += ["### Cold start\n", cold_start(data)]
    body = "\n".join(parts)
    print(body)
    write_section(f"llm4rec-{data.name}", body)


if __name__ == "__main__":
    main()
