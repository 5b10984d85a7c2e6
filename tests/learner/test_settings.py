"""One environment, one default: the service's and the learner's settings share `ProcessSettings`, and
the learner's frozen configs come from its settings sections (their only defaults)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import pytest

from common.settings import MissingSettingError, ProcessSettings
from learner.__main__ import main as learner_main
from learner.pipeline import GuardConfig
from learner.settings import GuardSettings, LearnerSettings, OnlineSettings
from learner.trainer import OnlineConfig
from service.settings import Settings

SHARED = (
    "model_dir",
    "cache_dir",
    "state_dir",
    "redis_url",
    "history_prefix",
    "history_len",
    "user_refresh_every",
    "items_stream",
    "model_key",
    "index",
    "kafka",
    "adapter",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in [k for k in os.environ if k.startswith("RECSYS_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_both_processes_read_the_shared_fields_alike(clean_env: pytest.MonkeyPatch) -> None:
    assert issubclass(Settings, ProcessSettings)
    assert issubclass(LearnerSettings, ProcessSettings)
    defaults = Settings(), LearnerSettings()
    assert [d.model_dump(include=set(SHARED)) for d in defaults] == [ProcessSettings().model_dump()] * 2
    assert defaults[0].redis_url is None  # embedded default: in process, for both
    clean_env.setenv("RECSYS_REDIS_URL", "redis://r:6379/1")
    clean_env.setenv("RECSYS_KAFKA__TOPIC", "t")
    clean_env.setenv("RECSYS_MODEL_DIR", "/m")
    for s in (Settings(), LearnerSettings()):
        assert (s.redis_url, s.kafka.topic, s.model_dir) == ("redis://r:6379/1", "t", Path("/m"))


def test_configs_have_no_defaults_of_their_own_and_settings_fill_every_field() -> None:
    for config, section in ((OnlineConfig, OnlineSettings), (GuardConfig, GuardSettings)):
        fields = dataclasses.fields(config)
        assert all(f.default is dataclasses.MISSING for f in fields), config
        assert {f.name for f in fields} == set(section.model_fields), config
    for settings in (OnlineSettings(lr=0.5), GuardSettings(margin=0.1)):
        assert dataclasses.asdict(settings.to_config()) == settings.model_dump()


def test_the_kafka_learner_refuses_to_start_without_redis(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(MissingSettingError, match="RECSYS_REDIS_URL is not set"):
        asyncio.run(learner_main(LearnerSettings()))
