"""Optional LLM re-rank (the generative step of LLM4Rec): the LLM reads the user's recent titles and
the model's top candidates and names the one it expects next, under a grammar that admits only the
candidates' numbers (constrained decoding, so the answer is always a valid candidate). The chosen
item moves to the top; the rest keep the model's order. Off by default: `bench/llm_rerank.py`
measures whether it helps (with the bundled 270M base model it does not; see BENCHMARKS.md).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol


class Reranker(Protocol):
    def choose(self, history: Sequence[str], candidates: Sequence[str]) -> int:
        """Index (0-based) of the candidate to put first."""
        ...


def rerank_prompt(history: Sequence[str], candidates: Sequence[str]) -> str:
    watched = "; ".join(history[-10:]) or "nothing yet"
    options = "\n".join(f"{n}. {t}" for n, t in enumerate(candidates, start=1))
    return (f"A viewer recently watched: {watched}.\nMovies they might watch next:\n{options}\n"
            "The movie they will most likely watch next is number ")  # fmt: skip


def choice_grammar(n: int) -> str:
    """GBNF admitting exactly one of "1" .. "n"."""
    return "root ::= " + " | ".join(f'"{i}"' for i in range(1, n + 1))


class LlamaCppReranker:
    """In-process llama.cpp with a GBNF grammar over the candidate numbers."""

    def __init__(self, gguf: Path, threads: int = 2) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_grammar import LlamaGrammar  # the optional [llm] extra

        self.llm: Any = Llama(model_path=str(gguf), n_ctx=2048, n_threads=threads, verbose=False)
        self._grammar = LlamaGrammar
        self._grammars: dict[int, Any] = {}
        self.lock = threading.Lock()

    def choose(self, history: Sequence[str], candidates: Sequence[str]) -> int:
        """Index (0-based) of the candidate the LLM picks."""
        n = len(candidates)
        if n not in self._grammars:
            self._grammars[n] = self._grammar.from_string(choice_grammar(n), verbose=False)
        with self.lock:
            out = self.llm(rerank_prompt(history, candidates), max_tokens=3, temperature=0.0,
                           grammar=self._grammars[n])  # fmt: skip
        return int(str(out["choices"][0]["text"]).strip()) - 1


def promote(order: list[int], chosen: int) -> list[int]:
    """The candidate at position `chosen` first, the others in their order."""
    return [order[chosen], *order[:chosen], *order[chosen + 1 :]]
