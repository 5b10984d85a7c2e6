"""Does the LLM re-rank help? Leave-one-out test users of a trained checkpoint: the model's top
candidates, then the in-process llama.cpp LLM (bundled Gemma 3 270M) picks one under a grammar over
the candidate numbers and it moves to the top. HR@10 / NDCG@10 of both orders on the same users.

    python bench/llm_rerank.py --model runs/llm4rec [--users 200] [--pool 20]

Rewrites the `llm-rerank` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from markdown_sections import command_line, write_section
from tqdm import tqdm

from models.scoring import HistoryBatch, pad_histories
from service.llm_explain import bundled_gguf
from service.llm_rerank import LlamaCppReranker, promote
from training.experiment import open_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def ndcg_hr(order: list[int], target: int, k: int = 10) -> tuple[float, float]:
    if target not in order[:k]:
        return 0.0, 0.0
    return 1.0 / np.log2(order.index(target) + 2), 1.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "runs/llm4rec")
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--pool", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    ck = open_checkpoint(args.model, ROOT / ".cache/text-embeddings")
    titles = ck.data.titles()
    test = ck.split.test
    rows = np.random.default_rng(args.seed).choice(len(test), min(args.users, len(test)), replace=False)
    reranker = LlamaCppReranker(bundled_gguf())
    seen = ck.train.log  # exclude what the user already saw in training, as the evaluation does
    by_user: dict[int, set[int]] = {}
    for u, i in zip(seen.user.tolist(), seen.item.tolist(), strict=True):
        by_user.setdefault(u, set()).add(i)
    model_m, llm_m, seconds = [], [], []
    for r in tqdm(rows, desc="llm re-rank"):
        hist = test.history_of(int(r))
        user = int(test.users[r])
        batch = HistoryBatch(torch.tensor([user]), pad_histories([hist], ck.model.config.max_len))
        with torch.inference_mode():
            scores = ck.model.score(batch)[0]
        scores = scores.clone()  # a normal tensor: inference tensors refuse in-place masking
        scores[list(by_user.get(user, ()))] = -torch.inf
        order = torch.topk(scores, args.pool).indices.tolist()
        target = int(test.targets[test.target_indptr[r]])
        t = time.perf_counter()
        chosen = reranker.choose([titles[i] for i in hist[-10:]], [titles[i] for i in order])
        seconds.append(time.perf_counter() - t)
        model_m.append(ndcg_hr(order, target))
        llm_m.append(ndcg_hr(promote(order, chosen), target))
    m, lm = np.mean(model_m, 0), np.mean(llm_m, 0)
    body = (f"## LLM re-rank\n\nCommand: `{command_line()}`. "
            f"{len(rows)} random leave-one-out test users of `{args.model.name}` ({ck.data.name}); the model's top "
            f"{args.pool} (training items excluded), then Gemma 3 270M (base, Q4_K_M, in-process llama.cpp, "
            "2 threads) picks one under a GBNF grammar over the candidate numbers and it moves to rank 1.\n\n"
            "| order | NDCG@10 | HR@10 |\n|---|---|---|\n"
            f"| model | {m[0]:.4f} | {m[1]:.4f} |\n| LLM pick first | {lm[0]:.4f} | {lm[1]:.4f} |\n\n"
            f"LLM time per request: p50 {1000 * np.median(seconds):.0f} ms. Re-rank stays off by default "
            f"(`RECSYS_RERANK__ENABLED`){' because it does not help here' if lm[0] <= m[0] else ''}.\n")  # fmt: skip
    print(body)
    write_section("llm-rerank", body)


if __name__ == "__main__":
    main()
