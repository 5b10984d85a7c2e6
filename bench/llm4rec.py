"""LLM4Rec against SASRec-CE over seeds, the popularity intervention, the fairness trade-off and
cold start, on full-ranking leave-one-out.

    python bench/llm4rec.py --dataset ../shared/data/ml-100k --seeds 0,1,2
    python bench/llm4rec.py --dataset ml-latest-small --seeds 0,1,2 --sections accuracy
    python bench/llm4rec.py --dataset ../shared/data/ml-100k --seeds 0,1 --sections fairness

Prints every figure as it comes and rewrites the `llm4rec-`, `popularity-`, `fairness-` and
`coldstart-<dataset>` sections of BENCHMARKS.md; charts go to bench/figures/. Each accuracy (model,
seed) result is kept in bench/results/accuracy-<dataset>.json, so `--models sasrec` and
`--models llm4rec` can run apart (a long ml-latest-small seed at a time) and `--models ''` rebuilds
the table.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib
import numpy as np
import torch
from markdown_sections import command_line, keep_cell, load_cells, write_section

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from models.data import RecDataset
from models.llm4rec import LLM4Rec, LLM4RecConfig
from models.scoring import pad_histories
from models.splits import Split, leave_one_out
from recdata import load_dataset
from training.ablation import DEFAULT
from training.coldstart import OnlyAmong, cold_eval_set, random_hit_rate, withhold_items
from training.evaluate import EvalContext, evaluate
from training.experiment import (
    RunConfig,
    llm4rec_fit_config,
    llm4rec_metrics,
    open_checkpoint,
    test_metrics,
    train_baseline,
)
from training.llm4rec_train import (
    GAMMA_MULTIPLIERS,
    GAMMA_TOLERANCE,
    TrainedLLM4Rec,
    smallest_near_best,
    train_llm4rec,
    validation_by_gamma,
)
from training.report import markdown_table

FIGURES = Path(__file__).resolve().parent / "figures"
CACHE = Path(".cache/text-embeddings")
KEYS = ("HR@10", "NDCG@10", "MRR", "Coverage@100", "LongTail@10", "ARP@10")


# LLM4Rec's batchers: uniformly random windows (the default), or windows of similar length
# (`LLM4RecConfig.length_buckets`), which the SASRec-CE settings table measured for SASRec-CE
LLM4REC_VARIANTS = {"llm4rec": LLM4RecConfig(), "llm4rec-lg": LLM4RecConfig(length_buckets=True)}


def train(data: RecDataset, split: Split, seed: int, base: LLM4RecConfig | None = None,
          **switches: object) -> TrainedLLM4Rec:  # fmt: skip
    cfg = RunConfig(seed=seed, progress=False)
    return train_llm4rec(data, split, replace(DEFAULT, **switches), llm4rec_fit_config(cfg), CACHE,  # type: ignore[arg-type]
                         progress=False, base=base)  # fmt: skip


def mean_std(rows: list[dict[str, float]], key: str) -> str:
    xs = np.array([r[key] for r in rows])
    return f"{xs.mean():.4f} ± {xs.std(ddof=1) if len(xs) > 1 else 0.0:.4f}"


def accuracy(data: RecDataset, split: Split, seeds: list[int], models: list[str]) -> tuple[str, TrainedLLM4Rec | None]:
    """Trains the listed models on each seed; the table reads every kept (model, seed) cell of these
    seeds, so the two models can be (re-)run separately."""
    store = f"accuracy-{data.name}"
    kept = load_cells(store)
    first = None
    for seed in seeds:
        cfg = RunConfig(seed=seed, progress=False)
        for m in models:
            if m == "sasrec":
                metrics = test_metrics(train_baseline("sasrec", data, split, cfg), split, cfg)
            else:
                trained = train(data, split, seed, LLM4REC_VARIANTS[m])
                first = first or trained
                metrics = llm4rec_metrics(trained, split, cfg)
            keep_cell(store, kept, m, seed, metrics)
            print(f"seed {seed}: {m} NDCG@10 {metrics['NDCG@10']:.4f}", flush=True)
    runs = {m: [kept[m][str(s)] for s in seeds if str(s) in kept.get(m, {})] for m in ("sasrec", *LLM4REC_VARIANTS)}
    lines = ["| model | HR@10 | NDCG@10 | MRR | train seconds | epochs to best |", "|---|---|---|---|---|---|"]
    for m, rows in runs.items():
        if rows:
            lines.append(f"| {m} | {mean_std(rows, 'HR@10')} | {mean_std(rows, 'NDCG@10')} | {mean_std(rows, 'MRR')} | "
                         f"{mean_std(rows, 'train_seconds')} | {mean_std(rows, 'best_epoch')} |")  # fmt: skip
            lines.append(f"| {m}, NDCG@10 per seed | " + ", ".join(f"{r['NDCG@10']:.4f}" for r in rows) + " | | | | |")
    text = (
        f"Mean ± sample std over seeds {seeds}. "
        + " ".join(_paired(kept, m, seeds) for m in LLM4REC_VARIANTS if runs[m])
        + "\n\n"
        + "\n".join(lines)
        + "\n"
    )
    return text, first


def _paired(kept: dict[str, dict[str, dict[str, float]]], model: str, seeds: list[int]) -> str:
    """`model` against SASRec-CE, paired by seed."""
    paired = [(kept[model][str(s)], kept["sasrec"][str(s)]) for s in seeds
              if str(s) in kept.get(model, {}) and str(s) in kept.get("sasrec", {})]  # fmt: skip
    gain = {k: np.mean([a[k] / b[k] - 1 for a, b in paired]) if paired else float("nan") for k in ("HR@10", "NDCG@10")}
    ratio = np.mean([a["NDCG@10"] for a, _ in paired]) / np.mean([b["NDCG@10"] for _, b in paired]) if paired else 0
    wins = sum(a["NDCG@10"] > b["NDCG@10"] for a, b in paired)
    return (
        f"`{model}` vs SASRec-CE, paired by seed: NDCG@10 {gain['NDCG@10']:+.1%}, HR@10 {gain['HR@10']:+.1%}; "
        f"ratio of the NDCG@10 means {ratio:.3f}; ahead on NDCG@10 in {wins} of {len(paired)} seeds."
    )


def debiasing(model: LLM4Rec, ctx: EvalContext, split: Split, source: str) -> str:
    """Test metrics at the served default gamma beside the validation best (over a grid that also
    amplifies popularity), the learned gamma and zero."""
    learned = float(model.gamma.detach())
    by_gamma = validation_by_gamma(model, split, ctx, (*GAMMA_MULTIPLIERS, 1.5, 2.0))
    candidates = {g: v for g, v in by_gamma.items() if abs(g) <= abs(learned)}
    chosen = {
        "served default": smallest_near_best(candidates, GAMMA_TOLERANCE),
        "validation best": max(by_gamma, key=by_gamma.__getitem__),
        "learned": learned,
        "zero": 0.0,
    }
    kept, rows = model.serve_gamma, {}
    for label, gamma in chosen.items():
        model.serve_gamma = gamma
        valid = {"valid NDCG@10": by_gamma[gamma]} if gamma in by_gamma else {}
        name = f"{label}: gamma = {gamma:.3f} ({gamma / learned if learned else 0:.2g} x learned)"
        rows[name] = {**valid, **evaluate(model, split.test, ctx)}
    model.serve_gamma = kept
    return (f"Serving-time do(popularity) on {source} (learned gamma {learned:.3f}). The served default is "
            f"the candidate in {{{', '.join(f'{m:g}' for m in GAMMA_MULTIPLIERS)}}} x learned closest to 0 whose "
            f"validation NDCG@10 is within {GAMMA_TOLERANCE:.0%} of the best of them; the validation best is "
            "taken over a grid up to 2 x learned; gamma = 0 removes popularity's direct effect entirely.\n\n"
            + markdown_table(rows, ("valid NDCG@10", *KEYS)))  # fmt: skip


FAIR_SETTINGS = {  # label -> (adversary weight, loss-parity weight); 0.1 / 0 is the full model
    "no fairness term": (0.0, 0.0),
    "adversary 0.1 (full model)": (0.1, 0.0),
    "adversary 1": (1.0, 0.0),
    "adversary 0.1 + parity 4": (0.1, 4.0),
}


def fairness(data: RecDataset, split: Split, seeds: list[int]) -> str:
    """Each setting over seeds: accuracy, the test NDCG@10 gap with its user-sampling standard error,
    the gap's change against no fairness term on the same seed, and how well a fresh probe still reads
    the attribute from the user vectors (what the adversary of eq. 16-17 is meant to erase)."""
    attr = data.sensitive[0]
    gap_key = f"NDCGGap@10[{attr}]"
    results: dict[str, list[dict[str, float]]] = {}
    for label, (lam, parity) in FAIR_SETTINGS.items():
        for seed in seeds:
            trained = train(data, split, seed, fair=lam + parity > 0, lambda_fair=lam, lambda_parity=parity)
            r = llm4rec_metrics(trained, split, RunConfig(seed=seed))
            r["probe"] = attribute_probe(trained, split, data.user_attributes[attr].codes, seed)
            results.setdefault(label, []).append(r)
            print(f"{label} seed {seed}: NDCG@10 {r['NDCG@10']:.4f}, gap {r[gap_key]:.4f} "
                  f"(se {r[f'NDCGGapSE@10[{attr}]']:.4f}), probe {r['probe']:.3f}", flush=True)  # fmt: skip
    base = [r[gap_key] for r in results["no fairness term"]]
    for rows in results.values():
        for r, b in zip(rows, base, strict=True):
            r["gap change"] = r[gap_key] - b
    path = _fairness_chart(results, gap_key, attr, data.name)
    cols = ("NDCG@10", "HR@10", gap_key, f"NDCGGapSE@10[{attr}]", "gap change", "probe", f"ExposureGap@10[{attr}]")
    lines = ["| setting | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(mean_std(rows, c) for c in cols) + " |" for label, rows in results.items()]
    return (f"Sensitive attribute `{attr}`, seeds {seeds}, mean ± sample std over seeds. The adversary predicts "
            f"`{attr}` from the user vector through gradient reversal (eq. 16-17); the parity term penalises the "
            "gap between the groups' mean training losses. `NDCGGapSE` is the gap's standard error from "
            "sampling users (one test item each); `gap change` is the gap minus the no-fairness gap on the "
            "same seed; `probe` is the balanced accuracy of a logistic regression trained afresh on 70% of "
            f"the users' vectors to predict `{attr}`, scored on the other 30% (0.5 = no information). Chart: "
            f"[{path.name}](bench/figures/{path.name}).\n\n" + "\n".join(lines) + "\n")  # fmt: skip


def attribute_probe(trained: TrainedLLM4Rec, split: Split, codes: np.ndarray, seed: int) -> float:
    """Balanced accuracy of a linear probe reading the attribute from test-time user vectors."""
    es = split.test
    known = np.flatnonzero(codes[es.users] >= 0)
    with torch.no_grad():
        hist = pad_histories([es.history_of(r) for r in known], max_len=1 << 30)
        x = trained.model.user_vectors(hist)
    y = torch.from_numpy(codes[es.users[known]]).long()
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(known)))
    cut = int(0.7 * len(known))
    fit, held = order[:cut], order[cut:]
    probe = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.LBFGS(probe.parameters(), max_iter=200)
    counts = torch.bincount(y[fit]).float()
    weight = counts.sum() / (counts.clamp(min=1) * len(counts))  # balanced: the majority guess scores 0.5

    def closure() -> torch.Tensor:
        opt.zero_grad()
        fit_loss = torch.nn.functional.cross_entropy(probe(x[fit]), y[fit], weight=weight)
        loss = fit_loss + 1e-3 * probe.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = probe(x[held]).argmax(1)
    recalls = [(pred[y[held] == g] == g).float().mean() for g in y[held].unique()]
    return float(torch.stack(recalls).mean())


def _fairness_chart(results: dict[str, list[dict[str, float]]], gap_key: str, attr: str, name: str) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, rows in results.items():
        gaps, ndcgs = np.array([r[gap_key] for r in rows]), np.array([r["NDCG@10"] for r in rows])
        ax.errorbar(gaps.mean(), ndcgs.mean(), xerr=gaps.std(), yerr=ndcgs.std(), fmt="o", capsize=3, label=label)
    se = np.mean([r[gap_key.replace("Gap", "GapSE")] for rows in results.values() for r in rows])
    ax.axvspan(0, 2 * se, color="0.9", zorder=0, label="within 2 standard errors of no gap")
    ax.xaxis.set_major_locator(MaxNLocator(5))  # the gaps are small numbers with long tick labels
    ax.set_xlabel(f"NDCG@10 gap between {attr} groups (lower is fairer)")
    ax.set_ylabel("NDCG@10")
    ax.set_title(f"{name}: fairness trade-off (mean ± std over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    FIGURES.mkdir(exist_ok=True)
    path = FIGURES / f"fairness-{name}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
    p.add_argument("--models", default="sasrec,llm4rec",
                   help="models the accuracy section trains; '' rebuilds its table from kept results")  # fmt: skip
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="popularity: evaluate this `llm4rec train` checkpoint "
        "(leave-one-out, this dataset) instead of training the first seed's model",
    )
    p.add_argument("--sections", default="accuracy,popularity,fairness,cold-start",
                   help="accuracy, popularity (the served gamma; seed 0), fairness, cold-start")  # fmt: skip
    args = p.parse_args()
    models = [m for m in args.models.split(",") if m]
    if unknown := set(models) - {"sasrec", *LLM4REC_VARIANTS}:
        p.error(f"--models: unknown {sorted(unknown)}; known: sasrec, {', '.join(LLM4REC_VARIANTS)}")
    data = load_dataset(args.dataset)
    split = leave_one_out(data)
    seeds = [int(s) for s in args.seeds.split(",")]
    sections = set(args.sections.split(","))
    command = f"Command: `{command_line()}`\n"
    first = None
    if "accuracy" in sections:
        text, first = accuracy(data, split, seeds, models)
        write_section(f"llm4rec-{data.name}", "\n".join([f"## LLM4Rec on {data.name}\n", command, text]))
    if "popularity" in sections:
        if args.checkpoint:  # a model trained by `llm4rec train` on this dataset, leave-one-out
            ck = open_checkpoint(args.checkpoint, CACHE)
            model, ctx, source = ck.model, EvalContext.build(ck.data, ck.train), f"`{args.checkpoint}`"
        else:
            trained = first or train(data, split, seeds[0])
            model, ctx, source = trained.model, trained.ctx, f"the seed-{seeds[0]} model"
        body = f"## Popularity intervention on {data.name}\n\n{command}\n" + debiasing(model, ctx, split, source)
        print(body, flush=True)
        write_section(f"popularity-{data.name}", body)
    if "fairness" in sections and data.sensitive:
        body = f"## Fairness on {data.name}\n\n{command}\n" + fairness(data, split, seeds)
        print(body, flush=True)
        write_section(f"fairness-{data.name}", body)
    if "cold-start" in sections:
        body = f"## Cold start on {data.name}\n\n{command}\n" + cold_start(data)
        print(body, flush=True)
        write_section(f"coldstart-{data.name}", body)


if __name__ == "__main__":
    main()
