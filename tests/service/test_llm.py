"""The LLM parts, with the bundled Gemma 3 270M and no mocked responses: wording through a real
llama.cpp server (OpenAI-compatible) and in process, the faithfulness check, timeouts and a backend
that is down; the constrained-choice re-rank."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from service.explain import Evidence, Reason, ToWord, template_text
from service.llm_explain import (
    FaithfulnessCheck,
    LlamaCppWording,
    LLMExplainer,
    OpenAICompatWording,
    bundled_gguf,
    few_shot_prompt,
    parse,
)
from service.llm_rerank import LlamaCppReranker, choice_grammar, promote
from service.metrics import Metrics
from service.settings import ExplainSettings, RerankSettings, Settings
from service.state import app_state
from tests.conftest import serve, with_
from tests.net import free_port, wait_http

ITEMS = [
    ToWord("Toy Story (1995)", ("Animation", "Comedy"),
           Reason("preference", 0.4, (Evidence("aspect", "Comedy", "Comedy", 0.31),))),
    ToWord("Heat (1995)", ("Action", "Crime"),
           Reason("similarity", 0.8, (Evidence("item", "6", "Casino (1995)", 0.9),))),
    ToWord("Fargo (1996)", ("Crime", "Drama"), Reason("context", 0.6, (
        Evidence("context", "c", "In 2015, 40 users rated Fargo (1996) 4.2 out of 5 on average.", 0.7),))),
]  # fmt: skip
CHECK = FaithfulnessCheck(["Toy Story (1995)", "Heat (1995)", "Fargo (1996)", "Casino (1995)", "Jumanji (1995)"],
                          ["Animation", "Comedy", "Action", "Crime", "Drama", "Horror"])  # fmt: skip


def test_the_check_accepts_grounded_text_and_names_what_is_not() -> None:
    for it in ITEMS:
        assert CHECK.violation(template_text(it.title, it.reason), it) is None
    toy, heat, fargo = ITEMS
    assert CHECK.violation("Toy Story (1995) has Comedy, which you love.", toy) is None
    assert CHECK.violation("Toy Story (1995) is 80% Comedy.", toy) == "number 80"
    assert CHECK.violation("Toy Story (1995) is a Horror classic.", toy) == "genre horror"
    assert CHECK.violation("Like Jumanji (1995), Heat (1995) thrills.", heat) == "title jumanji"
    assert CHECK.violation("In 2016, 40 users rated Fargo (1996) 4.2.", fargo) == "number 2016"


def test_numbered_lines_parse_by_number() -> None:
    assert parse("2. second\nnoise\n1) first\n2. again", 3) == ["first", "second", None]
    assert "Note: Heat (1995) is close to Casino (1995)" in few_shot_prompt(ITEMS[1])


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    pytest.importorskip("llama_cpp", reason="the [llm] extra (part of [dev]) is not installed")
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_gguf()), "--port", str(port),
           "--n_ctx", "4096", "--n_threads", "2"]  # fmt: skip
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_http(f"{url}/models", timeout_s=120, ok=300)
        yield url
    finally:
        p.kill()
        p.wait()


def _fallbacks(m: Metrics, backend: str, reason: str) -> float:
    return (
        m.registry.get_sample_value("recsys_explainer_fallbacks_total", {"backend": backend, "reason": reason}) or 0.0
    )


@pytest.mark.anyio
async def test_llama_cpp_server_words_every_item_or_falls_back_faithfully(llama_server: str) -> None:
    m = Metrics()
    wording = OpenAICompatWording(llama_server, "gemma", None, 60, "completions")
    lines = await wording(ITEMS, 50)
    assert all(lines)  # the model answered for every item
    assert not wording.lists_ok  # llama-cpp-python's server refuses prompt lists: one call per item
    explainer = LLMExplainer("openai", wording, CHECK, m, 60, 50, wording.http.aclose)
    texts = await explainer.word(ITEMS)
    await explainer.close()
    assert all(CHECK.violation(t, it) is None for t, it in zip(texts, ITEMS, strict=True))
    # every item is either the model's faithful line or its template, and each template is a counted
    # fallback (unfaithful, or timeout when the machine is busy: this model is slow on contended cores)
    templates = sum(t == template_text(it.title, it.reason) for t, it in zip(texts, ITEMS, strict=True))
    counted = sum(_fallbacks(m, "openai", r) for r in ("unfaithful", "missing", "timeout", "error"))
    assert templates == counted


@pytest.mark.anyio
async def test_a_slow_or_down_backend_answers_with_templates(llama_server: str) -> None:
    m = Metrics()
    slow = OpenAICompatWording(llama_server, "gemma", None, 60, "completions")
    texts = await LLMExplainer("openai", slow, CHECK, m, 0.01, 50).word(ITEMS)
    assert texts == [template_text(it.title, it.reason) for it in ITEMS]
    assert _fallbacks(m, "openai", "timeout") == 3
    down = OpenAICompatWording(f"http://127.0.0.1:{free_port()}/v1", "gemma", None, 1, "chat")
    assert await LLMExplainer("openai", down, CHECK, m, 2, 50).word(ITEMS[:1]) == [
        template_text(ITEMS[0].title, ITEMS[0].reason)
    ]
    assert _fallbacks(m, "openai", "error") == 1


@pytest.mark.anyio
async def test_in_process_llama_cpp_words_items() -> None:
    pytest.importorskip("llama_cpp", reason="the [llm] extra (part of [dev]) is not installed")
    lines = await LlamaCppWording(bundled_gguf())(ITEMS[2:], 50)
    assert lines[0]
    assert "Fargo (1996)" in lines[0]


@pytest.mark.anyio
async def test_recommend_with_the_llm_explainer(settings: Settings, llama_server: str) -> None:
    s = with_(settings, explain=ExplainSettings(backend="openai", base_url=llama_server, timeout_s=60))
    async with serve(s) as (client, app):
        r = await client.post("/recommend", json={"user_id": "u1", "k": 3})
        assert r.status_code == 200
        items = r.json()["items"]
        assert all(it["explanation"]["text"] for it in items)
        m: Metrics = app_state(app).metrics
        assert m.registry.get_sample_value("recsys_explainer_duration_seconds_count", {"backend": "openai"}) == 1
        ready = (await client.get("/readyz")).json()
        assert ready["dependencies"]["explainer"] == "openai"


def test_llm_rerank_answers_one_of_the_candidates() -> None:
    pytest.importorskip("llama_cpp", reason="the [llm] extra (part of [dev]) is not installed")
    assert choice_grammar(3) == 'root ::= "1" | "2" | "3"'
    reranker = LlamaCppReranker(bundled_gguf())
    candidates = ["Heat (1995)", "Casino (1995)", "Toy Story (1995)", "Fargo (1996)", "Jumanji (1995)", "Se7en (1995)"]
    for history in (["Goodfellas (1990)"], ["Aladdin (1992)", "The Lion King (1994)"], []):
        assert 0 <= reranker.choose(history, candidates) < len(candidates)
    assert promote([7, 8, 9, 10], 2) == [9, 7, 8, 10]


@pytest.mark.anyio
async def test_recommend_with_the_llm_rerank_promotes_one_model_candidate(settings: Settings) -> None:
    pytest.importorskip("llama_cpp", reason="the [llm] extra (part of [dev]) is not installed")
    body = {"user_id": "u1", "k": 5, "explain": False}
    async with serve(settings) as (client, _):
        pool = [it["item_id"] for it in (await client.post("/recommend", json={**body, "k": 20})).json()["items"]]
    async with serve(with_(settings, rerank=RerankSettings(enabled=True, pool=20))) as (client, _):
        got = [it["item_id"] for it in (await client.post("/recommend", json=body)).json()["items"]]
    assert got[0] in pool
    assert got[1:] == [i for i in pool if i != got[0]][:4]  # the rest keep the model's order
