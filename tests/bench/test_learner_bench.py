"""The prequential replay's protocol (bench/learner_bench.py): an event is scored against its user's
history up to the event before it, the earlier clicks of its own batch included, as the service
appends a click to the history when it accepts it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "learner_bench.py"


def _bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH.parent))  # the script imports its neighbours, as when run
    spec = importlib.util.spec_from_file_location("learner_bench", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "learner_bench", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_each_event_sees_the_earlier_clicks_of_its_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    before_each = _bench(monkeypatch)._before_each
    chunk = [(0, 10, 1), (1, 11, 2), (0, 12, 3), (2, 13, 4), (2, 14, 5)]  # (user, item, timestamp)
    users = ["a", "b", "a", "c", "c"]
    known, histories, seen = before_each(chunk, users, {"a": [1, 2], "b": []}, {"a": {1, 2, 3}})
    assert known == [0, 2, 4]  # b and c have no history before their first click
    assert [h.tolist() for h in histories] == [[1, 2], [1, 2, 10], [13]]
    assert seen == [{1, 2, 3}, {1, 2, 3, 10}, {13}]  # met items stay excluded; the batch's earlier ones too
