"""Service settings: environment variables with the RECSYS_ prefix, nested sections with `__`
(RECSYS_INDEX__LOCATION). Read once, in `create_app`; everything below receives plain values."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class IndexSettings(BaseModel):
    location: str = ".cache/index"  # a folder (Qdrant Edge), qdrant-local:PATH, or a Qdrant server URL
    api_key: SecretStr | None = None
    build_if_missing: bool = True  # embedded default: build the index from the checkpoint at first start


class RagSettings(BaseModel):
    enabled: bool = True
    k: int = Field(3, ge=1, le=20)
    l1: float = Field(1.0, ge=0)
    l2: float = Field(0.3, ge=0)
    l3: float = Field(0.3, ge=0)
    sigma_days: float = Field(365.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSYS_", env_nested_delimiter="__", extra="ignore")

    model_dir: Path = Path("runs/llm4rec")
    cache_dir: Path = Path(".cache/text-embeddings")
    redis_url: str | None = None  # None: in-process history (embedded default)
    history_prefix: str = "recsys:history:"
    history_len: int = Field(200, ge=1, le=10_000)
    index: IndexSettings = Field(default_factory=IndexSettings)
    rag: RagSettings = Field(default_factory=RagSettings)
