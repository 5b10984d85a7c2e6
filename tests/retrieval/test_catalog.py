"""The item index built from a trained LLM4Rec ranks exactly like the model, gamma included, and
new items become retrievable from content alone without touching the indexed ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.scoring import HistoryBatch
from retrieval.catalog import (
    ITEMS,
    Catalogue,
    ModelItemVectors,
    NewItem,
    build_item_index,
    extend_model,
    index_vectors,
    read_payloads,
)
from retrieval.edge import EdgeEngine
from retrieval.index import Filters
from retrieval.qdrant import QdrantEngine
from retrieval.user_models import query_vector, user_vectors
from tests.conftest import SmallTrained


@pytest.mark.parametrize("engine_name", ["edge", "qdrant-local"])
@pytest.mark.parametrize("gamma_scale", [0.0, 1.0])
def test_index_top10_equals_model_scores(small_trained: SmallTrained, tmp_path: Path, engine_name: str,
                                         gamma_scale: float) -> None:  # fmt: skip
    st = small_trained
    engine = EdgeEngine(tmp_path) if engine_name == "edge" else QdrantEngine(":memory:")
    index = build_item_index(engine, st.model, st.data, st.train.popularity(), ITEMS, progress=False)
    gamma = gamma_scale * float(st.model.gamma.detach())
    st.model.serve_gamma = gamma
    for user in range(0, 60, 7):
        hist = st.split.test.history_of(user)
        scores = st.model.score(HistoryBatch(torch.tensor([user]), torch.from_numpy(hist)[None]))[0]
        scores[torch.from_numpy(hist)] = -torch.inf
        expected = scores.topk(10).indices.tolist()
        u = user_vectors(st.model, [hist.tolist()])[0].numpy()
        hits = index.search(query_vector(u, gamma), 10, Filters(exclude_ids=frozenset(int(i) for i in hist)))
        assert [h.id for h in hits] == expected
        np.testing.assert_allclose([h.score for h in hits], scores.topk(10).values.numpy(), rtol=1e-4, atol=1e-4)


def test_payload_carries_what_serving_needs(small_trained: SmallTrained, tmp_path: Path) -> None:
    st = small_trained
    index = build_item_index(EdgeEngine(tmp_path), st.model, st.data, st.train.popularity(), ITEMS, progress=False)
    p = index.retrieve([3])[3]
    assert p["item_id"] == "m3"
    assert p["title"] == "The alien story part 0"
    assert p["year"] == 1983.0
    assert p["categories"] == ["Sci-Fi", "Action"]
    assert p["popularity"] == int(st.train.popularity()[3])
    assert p["last_interaction"] >= 1_600_000_000
    hits = index.search(np.ones(index.dim, np.float32), 40, Filters(categories=("Romance",), year_min=2010.0))
    assert {h.id for h in hits} == set(range(30, 40))


def test_new_items_get_content_vectors_and_are_retrievable(small_trained: SmallTrained, tmp_path: Path) -> None:
    st = small_trained
    model = st.model
    before = index_vectors(model).copy()
    index = build_item_index(EdgeEngine(tmp_path), model, st.data, st.train.popularity(), ITEMS, progress=False)
    new = [NewItem("new-space", "The robots story part 9", ("Sci-Fi", "Unknown genre"), 2024.0),
           NewItem("new-love", "The paris story part 9", ("Romance",), None)]  # fmt: skip
    try:
        source = ModelItemVectors(model, st.train, st.cache)
        catalogue = Catalogue(st.data, index, before, read_payloads(index, 40), source)
        assert catalogue.add([*new, NewItem("m3", "already served")]) == ["new-space", "new-love"]
        ids = [catalogue.item_index["new-space"], catalogue.item_index["new-love"]]
        assert ids == [40, 41]
        assert catalogue.data.item_ids[40:] == ("new-space", "new-love")
        assert catalogue.titles[41] == "The paris story part 9"
        assert catalogue.payloads[41]["item_id"] == "new-love"
        after = index_vectors(model)
        np.testing.assert_allclose(catalogue.vectors, after)
        np.testing.assert_allclose(after[:40], before, atol=1e-5)  # indexed items did not move
        assert np.isfinite(after[40:]).all()
        assert after[40, -1] == 0.0
        assert index.count() == 42
        assert index.retrieve([41])[41]["item_id"] == "new-love"
        for i in ids:  # the index scores each new item by exactly the vector the catalogue holds
            q = after[i] / np.linalg.norm(after[i])
            scores = {h.id: h.score for h in index.search(q, 42)}
            assert scores[i] == pytest.approx(float(q @ after[i]), rel=1e-4)
        # content alone puts the new space film nearer space films than romances
        sims = after[:, :-1] @ after[40, :-1]
        assert sims[:20].mean() > sims[20:40].mean()
    finally:
        extend_model(model, st.data, st.train, st.cache)  # back to the trained catalogue for other tests


def test_index_build_cli_publishes_items_and_context(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from llm4rec.cli import app
    from retrieval.engines import make_engine
    from service.components import collections
    from tests.llm4rec.test_cli import _small_generic
    from training.checkpoint import checkpoint_version, read_checkpoint_meta

    _small_generic(tmp_path / "data")
    cache, ckpt, loc = tmp_path / "cache", tmp_path / "ckpt", str(tmp_path / "index")
    runner = CliRunner()
    args = ["train", "--dataset", str(tmp_path / "data"), "--out", str(ckpt), "--max-epochs", "1"]
    assert runner.invoke(app, [*args, "--cache-dir", str(cache)]).exit_code == 0
    result = runner.invoke(app, ["index", "build", "--model", str(ckpt), "--location", loc, "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    engine = make_engine(loc)
    items, context = (engine.open(name) for name in collections(checkpoint_version(ckpt), read_checkpoint_meta(ckpt)))
    assert items is not None
    assert items.count() == 30
    assert context is not None
    assert context.count() > 30  # descriptions plus similar-item relations
    bad = runner.invoke(app, ["index", "build", "--model", str(tmp_path / "nothing"), "--location", loc])
    assert bad.exit_code == 2
    assert "is not a checkpoint" in bad.output
