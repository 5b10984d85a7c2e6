#!/usr/bin/env bash
# The GPU check, one command on a machine with an NVIDIA GPU: serve the explainer model of
# docker-compose.yml's `gpu` profile with `vllm serve`, then measure against it
#   - the service's OpenAI-compatible explainer (template baseline, chat mode as compose configures it,
#     completions mode): request latency, wording latency and template fallbacks by reason;
#   - the LLM re-rank of bench/llm_rerank.py (same users, pool and prompt), with vLLM's guided choice
#     over the candidate numbers in place of llama.cpp's grammar;
# and write the figures to BENCHMARKS.md (section `gpu-vllm`) and $GPU_CHECK_OUT/figures.json.
# vLLM is stopped on every exit path.
#
#   scripts/gpu_check.sh
#
# Needs: the project virtualenv (.venv, `pip install -e '.[dev]'`), curl, and vLLM in its own
# virtualenv (it pins its own CUDA build of torch, the project's is the CPU one):
#   python3 -m venv ~/vllm-env && ~/vllm-env/bin/pip install vllm==0.10.2
#   VLLM_BIN=~/vllm-env/bin/vllm scripts/gpu_check.sh
# google/gemma-3-270m-it is gated: accept its licence on Hugging Face and export HF_TOKEN.
# Without a checkpoint at $RECSYS_MODEL_DIR (runs/llm4rec) one is trained first (GPU_CHECK_TRAIN_S).
#
# Environment: VLLM_BIN, VLLM_PORT, VLLM_READY_TIMEOUT_S, VLLM_GPU_MEMORY_UTILIZATION, GPU_CHECK_REQUESTS,
# GPU_CHECK_RERANK_USERS, GPU_CHECK_OUT, GPU_CHECK_BENCHMARKS, GPU_CHECK_TRAIN_S, RECSYS_MODEL_DIR, PYTHON,
# NVIDIA_SMI.
set -euo pipefail
cd "$(dirname "$0")/.."

# The same three values as docker-compose.yml (tests/deploy/test_compose.py holds them equal).
VLLM_VERSION=0.10.2
MODEL=google/gemma-3-270m-it
SERVED=gemma3-270m

VLLM_BIN=${VLLM_BIN:-vllm}
NVIDIA_SMI=${NVIDIA_SMI:-nvidia-smi}
PYTHON=${PYTHON:-.venv/bin/python}
PORT=${VLLM_PORT:-8011}
READY_TIMEOUT_S=${VLLM_READY_TIMEOUT_S:-900}  # a cold start downloads the model and captures CUDA graphs
GPU_UTIL=${VLLM_GPU_MEMORY_UTILIZATION:-0.3}  # a 270M model: leave the card to others
CHECKPOINT=${RECSYS_MODEL_DIR:-runs/llm4rec}
OUT_DIR=${GPU_CHECK_OUT:-results/gpu-check}
vllm_pid=

die() {
    echo "gpu_check: $*" >&2
    exit 1
}

stop_vllm() {
    [[ -n $vllm_pid ]] || return 0
    local pid=$vllm_pid
    vllm_pid=
    # vllm runs in its own session (setsid): the group signal reaches its engine-core workers too
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    (sleep 30 && kill -KILL -- "-$pid" 2>/dev/null) >/dev/null 2>&1 &
    local watchdog=$!
    wait "$pid" 2>/dev/null || true
    kill "$watchdog" 2>/dev/null || true
    kill -KILL -- "-$pid" 2>/dev/null || true # stragglers of the group, if any
    echo "gpu_check: vllm stopped" >&2
}

trap stop_vllm EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- preconditions, all checked before anything slow starts ---------------------------------------
command -v "$NVIDIA_SMI" >/dev/null 2>&1 ||
    die "no NVIDIA GPU on this machine ($NVIDIA_SMI not found); run this on a GPU machine"
gpu=$("$NVIDIA_SMI" --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -n 1) || gpu=
[[ -n $gpu ]] || die "$NVIDIA_SMI answers but lists no GPU (driver not loaded, or no device visible)"
command -v "$VLLM_BIN" >/dev/null 2>&1 ||
    die "vllm not found ($VLLM_BIN): python3 -m venv ~/vllm-env && ~/vllm-env/bin/pip install vllm==$VLLM_VERSION, then VLLM_BIN=~/vllm-env/bin/vllm $0"
command -v curl >/dev/null 2>&1 || die "curl not found (apt-get install curl)"
[[ -x $PYTHON ]] || die "no project virtualenv at $PYTHON: python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' (or PYTHON=...)"
got=$("$VLLM_BIN" --version 2>/dev/null | tail -n 1) || got=unknown
[[ $got == "$VLLM_VERSION" ]] ||
    echo "gpu_check: warning: vllm $got here, docker-compose.yml pins $VLLM_VERSION; figures are for $got" >&2
if [[ -z ${HF_TOKEN:-}${HUGGING_FACE_HUB_TOKEN:-} ]]; then
    echo "gpu_check: warning: no HF_TOKEN; $MODEL is gated, so it must already be in the Hugging Face cache" >&2
fi
if curl -s -o /dev/null "http://127.0.0.1:$PORT/"; then
    die "port $PORT already answers (another server?): stop it or set VLLM_PORT"
fi
mkdir -p "$OUT_DIR"
if [[ ! -f $CHECKPOINT/model.safetensors ]]; then
    echo "gpu_check: no checkpoint at $CHECKPOINT: training one (at most ${GPU_CHECK_TRAIN_S:-300} s)" >&2
    "$PYTHON" -m llm4rec train --out "$CHECKPOINT" --time-budget "${GPU_CHECK_TRAIN_S:-300}"
fi

# --- vLLM -----------------------------------------------------------------------------------------
log=$OUT_DIR/vllm.log
echo "gpu_check: starting vllm $got on $gpu (log: $log)" >&2
setsid "$VLLM_BIN" serve "$MODEL" --served-model-name "$SERVED" --host 127.0.0.1 --port "$PORT" \
    --max-model-len 4096 --gpu-memory-utilization "$GPU_UTIL" --seed 0 >"$log" 2>&1 &
vllm_pid=$!
started=$SECONDS
deadline=$((started + READY_TIMEOUT_S))
until curl -fsS "http://127.0.0.1:$PORT/v1/models" >/dev/null 2>&1; do
    if ! kill -0 "$vllm_pid" 2>/dev/null; then
        tail -n 40 "$log" >&2
        die "vllm serve exited before it was ready (log: $log)"
    fi
    if ((SECONDS >= deadline)); then
        tail -n 40 "$log" >&2
        die "vllm not ready after ${READY_TIMEOUT_S} s (log: $log; raise VLLM_READY_TIMEOUT_S for a slow download)"
    fi
    sleep 2
done
echo "gpu_check: vllm ready after $((SECONDS - started)) s" >&2

# --- figures --------------------------------------------------------------------------------------
export GPU_CHECK_BASE_URL="http://127.0.0.1:$PORT/v1" GPU_CHECK_SERVED=$SERVED GPU_CHECK_MODEL=$MODEL \
    GPU_CHECK_GPU=$gpu GPU_CHECK_CHECKPOINT=$CHECKPOINT GPU_CHECK_OUT_DIR=$OUT_DIR \
    GPU_CHECK_N=${GPU_CHECK_REQUESTS:-50} GPU_CHECK_USERS=${GPU_CHECK_RERANK_USERS:-200}
"$PYTHON" - <<'PY'
# gpu-check:python:start
"""Figures against the running vLLM server (the environment above says where it is)."""

import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
import torch

ROOT = Path.cwd()
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from llm_rerank import ndcg_hr  # noqa: E402
from markdown_sections import write_section  # noqa: E402
from service_load import service  # noqa: E402

from models.scoring import HistoryBatch, pad_histories  # noqa: E402
from service.llm_rerank import promote, rerank_prompt  # noqa: E402
from tests.net import free_port  # noqa: E402
from training.experiment import open_checkpoint  # noqa: E402

E = os.environ
BASE, SERVED, MODEL_DIR = E["GPU_CHECK_BASE_URL"], E["GPU_CHECK_SERVED"], Path(E["GPU_CHECK_CHECKPOINT"])
N, USERS, POOL = int(E["GPU_CHECK_N"]), int(E["GPU_CHECK_USERS"]), 20
FALLBACK = re.compile(r'recsys_explainer_fallbacks_total\{[^}]*reason="([^"]+)"[^}]*\} (\S+)')
WORDING = re.compile(r"recsys_explainer_duration_seconds_(sum|count)\{[^}]*\} (\S+)")


@dataclass(frozen=True)
class ExplainerRow:
    wording: str
    p50_ms: float
    p95_ms: float
    wording_mean_ms: float | None  # the explainer's own histogram; None for the template (never timed)
    lines: int
    fallbacks: dict[str, int]  # reason -> template lines

    def markdown(self) -> str:
        mean = "-" if self.wording_mean_ms is None else f"{self.wording_mean_ms:.0f}"
        why = ", ".join(f"{r} {n}" for r, n in sorted(self.fallbacks.items()))
        fb = f"{sum(self.fallbacks.values())} of {self.lines}" + (f" ({why})" if why else "")
        return f"| {self.wording} | {self.p50_ms:.0f} | {self.p95_ms:.0f} | {mean} | {fb} |"


@dataclass(frozen=True)
class RerankResult:
    users: int
    model: tuple[float, float]  # NDCG@10, HR@10 in the model's order
    llm_first: tuple[float, float]  # with the LLM's pick moved to rank 1
    p50_ms: float


def scrape(client: httpx.Client, url: str) -> tuple[dict[str, float], dict[str, float]]:
    text = client.get(f"{url}/metrics").text
    return {r: float(v) for r, v in FALLBACK.findall(text)}, {k: float(v) for k, v in WORDING.findall(text)}


def explainer(label: str, env: dict[str, str]) -> ExplainerRow:
    """N sequential POST /recommend (k = 10: ten lines each) after one warm-up, metrics diffed around them."""
    env = {"RECSYS_FEEDBACK__SPOOL_DIR": tempfile.mkdtemp(prefix="gpu-check-spool-"),
           "RECSYS_STATE_DIR": tempfile.mkdtemp(prefix="gpu-check-state-"), **env}
    with service(MODEL_DIR, free_port(), env) as url, httpx.Client(timeout=120) as c:
        c.post(f"{url}/recommend", json={"user_id": "1", "k": 10}).raise_for_status()
        (fb0, w0), times = scrape(c, url), []
        for u in range(2, N + 2):
            t = time.perf_counter()
            c.post(f"{url}/recommend", json={"user_id": str(u), "k": 10}).raise_for_status()
            times.append(1000 * (time.perf_counter() - t))
        fb1, w1 = scrape(c, url)
    calls = w1.get("count", 0.0) - w0.get("count", 0.0)
    row = ExplainerRow(
        wording=label,
        p50_ms=float(np.percentile(times, 50)),
        p95_ms=float(np.percentile(times, 95)),
        wording_mean_ms=1000 * (w1.get("sum", 0.0) - w0.get("sum", 0.0)) / calls if calls else None,
        lines=10 * N,
        fallbacks={r: int(v - fb0.get(r, 0.0)) for r, v in fb1.items() if v > fb0.get(r, 0.0)},
    )
    print(row.markdown(), flush=True)
    return row


def choose(client: httpx.Client, history: list[str], candidates: list[str]) -> int:
    body = {"model": SERVED, "prompt": rerank_prompt(history, candidates), "max_tokens": 3, "temperature": 0.0,
            "guided_choice": [str(i) for i in range(1, len(candidates) + 1)]}  # fmt: skip
    r = client.post(f"{BASE}/completions", json=body)
    r.raise_for_status()
    return int(str(r.json()["choices"][0]["text"]).strip()) - 1


def rerank() -> RerankResult:
    """bench/llm_rerank.py's protocol (seed 0, pool 20), the pick made by the vLLM-served model."""
    ck = open_checkpoint(MODEL_DIR, ROOT / ".cache/text-embeddings")
    titles, test, seen = ck.data.titles(), ck.split.test, ck.train.log
    rows = np.random.default_rng(0).choice(len(test), min(USERS, len(test)), replace=False)
    by_user: dict[int, set[int]] = {}
    for u, i in zip(seen.user.tolist(), seen.item.tolist(), strict=True):
        by_user.setdefault(u, set()).add(i)
    model_m, llm_m, seconds = [], [], []
    with httpx.Client(timeout=60) as client:
        for r in rows:
            hist, user = test.history_of(int(r)), int(test.users[r])
            batch = HistoryBatch(torch.tensor([user]), pad_histories([hist], ck.model.config.max_len))
            with torch.inference_mode():
                scores = ck.model.score(batch)[0]
            scores = scores.clone()  # a normal tensor: inference tensors refuse in-place masking
            scores[list(by_user.get(user, ()))] = -torch.inf
            order = torch.topk(scores, POOL).indices.tolist()
            target = int(test.targets[test.target_indptr[r]])
            t = time.perf_counter()
            chosen = choose(client, [titles[i] for i in hist[-10:]], [titles[i] for i in order])
            seconds.append(time.perf_counter() - t)
            model_m.append(ndcg_hr(order, target))
            llm_m.append(ndcg_hr(promote(order, chosen), target))
    m, lm = np.mean(model_m, 0), np.mean(llm_m, 0)
    return RerankResult(len(rows), (float(m[0]), float(m[1])), (float(lm[0]), float(lm[1])),
                        1000 * float(np.median(seconds)))  # fmt: skip


def main() -> None:
    try:
        version = str(httpx.get(BASE.removesuffix("/v1") + "/version", timeout=5).json()["version"])
    except (httpx.HTTPError, KeyError, ValueError):
        version = "unknown"
    openai = {"RECSYS_EXPLAIN__BACKEND": "openai", "RECSYS_EXPLAIN__BASE_URL": BASE, "RECSYS_EXPLAIN__MODEL": SERVED}
    rows = [explainer("template", {"RECSYS_EXPLAIN__BACKEND": "template"}),
            explainer("openai, chat (as compose)", {**openai, "RECSYS_EXPLAIN__MODE": "chat"}),
            explainer("openai, completions", {**openai, "RECSYS_EXPLAIN__MODE": "completions"})]  # fmt: skip
    rr = rerank()
    body = (f"## vLLM on a GPU\n\nCommand: `scripts/gpu_check.sh`. vLLM {version} (`vllm serve {E['GPU_CHECK_MODEL']}"
            f" --served-model-name {SERVED}`) on {E['GPU_CHECK_GPU']}. The service (one uvicorn worker, embedded "
            f"defaults, default explainer timeout) answers {N} sequential `POST /recommend` with k = 10 (ten worded "
            "lines each) per setting, after one warm-up request:\n\n"
            "| wording | p50 ms | p95 ms | mean wording ms | template fallbacks (lines) |\n|---|---|---|---|---|\n"
            + "\n".join(r.markdown() for r in rows)
            + f"\n\nLLM re-rank through the same server, `bench/llm_rerank.py`'s protocol: {rr.users} leave-one-out "
            f"test users, the model's top {POOL}, the served model picks one under vLLM's guided choice over the "
            "candidate numbers and it moves to rank 1.\n\n| order | NDCG@10 | HR@10 |\n|---|---|---|\n"
            f"| model | {rr.model[0]:.4f} | {rr.model[1]:.4f} |\n"
            f"| LLM pick first | {rr.llm_first[0]:.4f} | {rr.llm_first[1]:.4f} |\n\n"
            f"LLM time per re-rank: p50 {rr.p50_ms:.0f} ms.\n")  # fmt: skip
    out = Path(E["GPU_CHECK_OUT_DIR"]) / "figures.json"
    figures = {"vllm": version, "gpu": E["GPU_CHECK_GPU"], "explainer": [asdict(r) for r in rows], "rerank": asdict(rr)}
    out.write_text(json.dumps(figures, indent=2))
    print(body)
    benchmarks = Path(E.get("GPU_CHECK_BENCHMARKS", ROOT / "BENCHMARKS.md"))
    write_section("gpu-vllm", body, benchmarks)
    print(f"wrote {out} and the gpu-vllm section of {benchmarks}", file=sys.stderr)


main()
# gpu-check:python:end
PY
