"""docker-compose.yml, the Dockerfile and the Grafana provisioning, checked against the code: no Docker
engine runs here, so what can be checked without one is checked."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from learner.settings import LearnerSettings
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
GPU_CHECK = (ROOT / "scripts/gpu_check.sh").read_text()
# Gemma 3 270M's config marks its sliding-window layers only through `layer_types`, read by vLLM since
# PR #21927 (August 2025); v0.10.2 is the first release cut well after it (see docker-compose.yml).
VLLM_FLOOR = (0, 10, 2)


def _field_exists(model: type[BaseModel], path: list[str]) -> bool:
    name, rest = path[0], path[1:]
    field = model.model_fields.get(name)
    if field is None:
        return False
    if not rest:
        return True
    sub = field.annotation
    return isinstance(sub, type) and issubclass(sub, BaseModel) and _field_exists(sub, rest)


def _env(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in SERVICES[service].get("environment", {}).items()}


@pytest.mark.parametrize("service", ["service", "learner"])
def test_every_recsys_variable_exists_in_that_processs_settings(service: str) -> None:
    settings = Settings if service == "service" else LearnerSettings
    names = [k for k in _env(service) if k.startswith("RECSYS_")]
    assert names
    unknown = [k for k in names if not _field_exists(settings, k.removeprefix("RECSYS_").lower().split("__"))]
    assert unknown == []


def test_every_service_has_a_health_check_and_waits_for_healthy_dependencies() -> None:
    for name, svc in SERVICES.items():
        assert "healthcheck" in svc, name
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in SERVICES
            assert cond == {"condition": "service_healthy"}, (name, dep)


def test_ports_bind_loopback_only_and_secrets_are_required() -> None:
    for name, svc in SERVICES.items():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
    text = (ROOT / "docker-compose.yml").read_text()
    for secret in ("RECSYS_API_KEY", "RECSYS_ADAPTER_SIGNING_KEY", "GRAFANA_ADMIN_PASSWORD"):
        assert re.search(r"\$\{" + secret + r":\?", text), secret
    for volume in ("kafka-data", "qdrant-data", "redis-data"):
        assert volume in COMPOSE["volumes"]


def test_urls_and_ports_agree_across_services() -> None:
    env = {**_env("service"), **_env("learner")}
    assert env["RECSYS_REDIS_URL"] == "redis://redis:6379/0"
    assert env["RECSYS_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert "PLAINTEXT://kafka:9092" in SERVICES["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert env["RECSYS_INDEX__LOCATION"] == "http://qdrant:6333"
    assert env["RECSYS_EXPLAIN__BASE_URL"].startswith("http://vllm:8000/")
    assert "8000" in SERVICES["vllm"]["command"]
    assert SERVICES["service"]["command"][-1] == "8000"
    assert "127.0.0.1:8000:8000" in SERVICES["service"]["ports"]
    learner_port = env["RECSYS_LEARNER_METRICS_PORT"]
    assert learner_port in str(SERVICES["learner"]["healthcheck"]["test"])
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {c["job_name"]: c["static_configs"][0]["targets"] for c in scrape["scrape_configs"]}
    assert targets == {"service": ["service:8000"], "learner": [f"learner:{learner_port}"]}
    assert SERVICES["vllm"]["profiles"] == ["gpu"]
    assert "/app/runs" in env["RECSYS_MODEL_DIR"]


def test_the_learner_fine_tunes_into_the_folder_and_index_the_service_reads() -> None:
    service, learner = _env("service"), _env("learner")
    for key in ("RECSYS_MODEL_DIR", "RECSYS_INDEX__LOCATION", "RECSYS_REDIS_URL", "RECSYS_CACHE_DIR"):
        assert service[key] == learner[key], key
    assert "runs:/app/runs" in SERVICES["service"]["volumes"]
    assert "runs:/app/runs" in SERVICES["learner"]["volumes"]


def test_the_dockerfile_runs_as_non_root_with_a_health_check_and_pinned_dependencies() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "USER llm4rec" in text
    assert "HEALTHCHECK" in text
    assert "/healthz" in text
    assert "PYTHONUNBUFFERED=1" in text
    assert "-c requirements.lock" in text
    lock = (ROOT / "requirements.lock").read_text()
    for dep in ("fastapi", "aiokafka", "qdrant-client", "redis", "torch"):
        assert re.search(rf"^{dep}==", lock, re.M), dep


def test_grafana_provisioning_is_valid() -> None:
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    dash = json.loads((ROOT / "deploy/grafana/dashboards/llm4rec.json").read_text())
    assert dash["schemaVersion"] >= 36
    assert dash["uid"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["datasource"] == {"type": "prometheus", "uid": uid}
        assert p["targets"]
        assert all(t["datasource"]["uid"] == uid and t["expr"] for t in p["targets"])
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/llm4rec.yml").read_text())
    mount = SERVICES["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in mount


def _release(tag: str) -> tuple[int, ...]:
    m = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)(?:\.\d+|\.post\d+)?", tag)
    assert m, f"vLLM image tag {tag!r} is not a release (latest and nightlies are not reproducible)"
    return tuple(int(x) for x in m.groups())


def _arg(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def _script_default(name: str) -> str:
    m = re.search(rf"^{name}=(\S+)$", GPU_CHECK, re.M)
    assert m, name
    return m.group(1)


def test_vllm_is_a_release_that_serves_gemma_3_270m_and_the_service_asks_for_its_model() -> None:
    vllm = SERVICES["vllm"]
    image, tag = vllm["image"].rsplit(":", 1)
    assert image == "vllm/vllm-openai"
    assert _release(tag) >= VLLM_FLOOR
    model, served = _arg(vllm["command"], "--model"), _arg(vllm["command"], "--served-model-name")
    assert model == "google/gemma-3-270m-it"
    env = _env("service")
    assert env["RECSYS_EXPLAIN__MODEL"] == served
    assert env["RECSYS_EXPLAIN__MODE"] == "chat"  # an instruction-tuned (-it) model
    assert "RECSYS_EXPLAIN_BACKEND" in env["RECSYS_EXPLAIN__BACKEND"]  # the gpu profile's switch


def test_the_gpu_check_serves_what_compose_serves() -> None:
    vllm = SERVICES["vllm"]
    assert _script_default("VLLM_VERSION") == vllm["image"].rsplit(":v", 1)[1]
    assert _script_default("MODEL") == _arg(vllm["command"], "--model")
    assert _script_default("SERVED") == _arg(vllm["command"], "--served-model-name")
    assert _arg(vllm["command"], "--max-model-len") in GPU_CHECK
