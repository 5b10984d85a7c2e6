"""Evaluation results on disk: results.json, a markdown table and a PNG bar chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: the chart goes to a file
import matplotlib.pyplot as plt

TABLE_COLUMNS = ("HR@10", "NDCG@10", "MRR", "Coverage@100", "LongTail@10", "ARP@10", "Novelty@10", "ILD@10")


def markdown_table(results: dict[str, dict[str, float]], columns: tuple[str, ...] = TABLE_COLUMNS) -> str:
    present = [c for c in columns if any(c in r for r in results.values())]
    present += sorted({k for r in results.values() for k in r if "Gap" in k} - set(present))
    lines = ["| model | " + " | ".join(present) + " |", "|---" * (len(present) + 1) + "|"]
    for model, r in results.items():
        cells = [_fmt(r[c]) if c in r else "-" for c in present]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(x: float) -> str:
    return f"{x:.1f}" if abs(x) >= 100 else f"{x:.4f}"


def bar_chart(results: dict[str, dict[str, float]], path: Path, title: str) -> None:
    metrics = [m for m in ("HR@10", "NDCG@10", "MRR") if all(m in r for r in results.values())]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(results)), 4))
    width = 0.8 / max(1, len(metrics))
    for j, m in enumerate(metrics):
        xs = [i + j * width for i in range(len(results))]
        bars = ax.bar(xs, [r[m] for r in results.values()], width, label=m)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks([i + width * (len(metrics) - 1) / 2 for i in range(len(results))], list(results))
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, results: dict[str, dict[str, float]], meta: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    title = f"{meta['dataset']} - {meta['split']} - {meta['protocol']}"
    (out / "results.md").write_text(f"# {title}\n\n" + markdown_table(results))
    bar_chart(results, out / "results.png", title)
