"""The write paths' security: rate limits, production mode, no pickle across process boundaries,
secrets kept out of logs and probes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from common.settings import AdapterSettings
from service.app import create_app
from service.ratelimit import TokenBuckets
from service.settings import ApiSettings, Settings
from tests.conftest import serve, with_

ROOT = Path(__file__).resolve().parents[2]


def test_token_buckets_allow_a_burst_then_the_sustained_rate() -> None:
    b = TokenBuckets(rate=2.0, burst=3)
    assert [b.take("k", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take("k", now=0.0) == pytest.approx(0.5)  # one token comes back every half second
    assert b.take("k", now=0.5) == 0.0
    assert b.take("other", now=0.5) == 0.0  # callers do not share a bucket


@pytest.mark.anyio
async def test_writes_over_the_rate_get_429_with_retry_after(settings: Settings) -> None:
    api = ApiSettings(key=SecretStr("k1"), write_rate_per_s=0.5, write_burst=2)
    async with serve(with_(settings, api=api)) as (client, _):
        body = {"events": [{"user_id": "u1", "item_id": "m1", "type": "view"}]}
        codes = [(await client.post("/feedback", json=body, headers={"X-API-Key": "k1"})).status_code
                 for _ in range(3)]  # fmt: skip
        assert codes == [202, 202, 429]
        r = await client.post("/feedback", json=body, headers={"X-API-Key": "k1"})
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) >= 1
        assert (await client.post("/recommend", json={"user_id": "u1"})).status_code == 200  # reads unaffected


@pytest.mark.anyio
async def test_production_mode_refuses_to_start_without_keys(settings: Settings) -> None:
    with pytest.raises(ValueError, match="production"):
        create_app(with_(settings, production=True))
    with pytest.raises(ValueError, match="production"):
        create_app(with_(settings, production=True, api=ApiSettings(key=SecretStr("k"))))
    keyed = with_(settings, production=True, api=ApiSettings(key=SecretStr("k")),
                  adapter=AdapterSettings(signing_key=SecretStr("s")))  # fmt: skip
    assert create_app(keyed) is not None


def test_nothing_unpickles_bytes() -> None:
    """Bytes that cross a process boundary (Kafka records, Redis adapters, checkpoints, caches) are JSON or
    safetensors: no pickle, no torch.load, no allow_pickle anywhere in the packages."""
    pattern = re.compile(r"import pickle|from pickle|cloudpickle|torch\.load\(|allow_pickle\s*=\s*True|dill\.")
    offenders = [f"{p}:{n}" for pkg in ("common", "models", "recdata", "training", "retrieval", "service", "learner",
                                        "llm4rec")
                 for p in (ROOT / pkg).rglob("*.py") for n, line in enumerate(p.read_text().splitlines(), 1)
                 if pattern.search(line)]  # fmt: skip
    assert offenders == []


@pytest.mark.anyio
async def test_secrets_stay_out_of_logs_probes_and_errors(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    secrets = ("api-secret-123", "signing-secret-456")
    s = with_(
        settings, api=ApiSettings(key=SecretStr(secrets[0])), adapter=AdapterSettings(signing_key=SecretStr(secrets[1]))
    )
    async with serve(s) as (client, _):
        ready = await client.get("/readyz")
        wrong = await client.post("/feedback", json={"events": []}, headers={"X-API-Key": "guess"})
        ok = await client.post("/feedback", json={"events": [{"user_id": "u1", "item_id": "m1", "type": "view"}]},
                               headers={"X-API-Key": secrets[0]})  # fmt: skip
        texts = [ready.text, wrong.text, ok.text, (await client.get("/metrics")).text, repr(s), str(s.model_dump())]
    out = capsys.readouterr()
    for secret in secrets:
        assert all(secret not in t for t in [*texts, out.out, out.err])
