"""Schemathesis against the app's own OpenAPI, in process over ASGI, with the real lifespan: no input
may cause a 5xx, and every response must match the documented schema. A bounded run here; the bench
runs over a thousand cases (`bench/fuzz.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.python import asgi

from service.app import create_app
from service.settings import FeedbackSettings, IndexSettings, Settings
from tests.conftest import SmallTrained

EXAMPLES = 25  # per operation


@pytest.fixture(scope="module")
def fuzz_client(
    checkpoint: Path, small_trained: SmallTrained, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("fuzz")
    ix, spool = IndexSettings(location=str(root / "ix")), FeedbackSettings(spool_dir=root / "spool")
    settings = Settings(model_dir=checkpoint, cache_dir=small_trained.cache, index=ix, feedback=spool,
                        added_items_log=root / "added.jsonl")  # fmt: skip
    app = create_app(settings)
    with asgi.get_client(app) as client:  # one client for the run: the lifespan starts once
        client.app_under_test = app
        yield client


def fuzz(client: Any, examples: int) -> int:
    """Every operation of the app's OpenAPI, `examples` generated cases each; returns the cases run.
    `call_and_validate` fails on a 5xx or a response that does not match its documented schema."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app_under_test)
    ran = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(operation.as_strategy())
        @hypothesis_settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck),
                             database=None)  # fmt: skip
        def run(case: Any) -> None:
            nonlocal ran
            ran += 1
            case.call_and_validate(session=client)

        run()
    return ran


def test_no_input_gets_a_5xx_and_every_answer_matches_its_schema(fuzz_client: Any) -> None:
    assert fuzz(fuzz_client, EXAMPLES) >= 3 * EXAMPLES  # the three body-taking operations reach the bound
