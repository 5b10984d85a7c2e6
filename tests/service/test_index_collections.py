"""One index location, several models: each checkpoint serves from its own item collection."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.catalog import index_vectors
from retrieval.index import Filters
from retrieval.user_models import query_vector
from service.settings import Settings
from service.state import app_state
from tests.conftest import SmallTrained, serve, with_
from training.checkpoint import Switches, save_checkpoint

pytestmark = pytest.mark.anyio


def _retrained(st: SmallTrained, out: Path) -> np.ndarray:
    """A checkpoint of the same data and item ids whose item vectors differ; returns its index rows."""
    model = copy.deepcopy(st.model)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.fusion.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.load_state_dict(model.state_dict())  # drops the cached item vectors
    extra = {"dataset_ref": str(st.folder), "run": {"split": "leave-one-out", "min_rating": None, "seed": 1}}
    save_checkpoint(out, model, st.data, st.split.train, Switches(), extra)
    return index_vectors(model)


async def test_a_retrained_model_never_serves_the_previous_models_vectors(
    settings: Settings, small_trained: SmallTrained, tmp_path: Path
) -> None:
    async with serve(settings) as (client, _):  # builds the first model's collection at the location
        assert (await client.post("/recommend", json={"user_id": "u1", "k": 3})).status_code == 200
    rows = _retrained(small_trained, tmp_path / "retrained")
    async with serve(with_(settings, model_dir=tmp_path / "retrained")) as (client, app):
        cat = app_state(app).recommender.c.catalogue
        q = query_vector(np.random.default_rng(0).normal(size=rows.shape[1] - 1).astype(np.float32), 1.0)
        hits = cat.index.search(q, 10, Filters())
        np.testing.assert_allclose([h.score for h in hits], rows[[h.id for h in hits]] @ q, rtol=1e-4, atol=1e-4)
        assert [h.id for h in hits] == np.argsort(-(rows @ q))[:10].tolist()
        assert (await client.post("/recommend", json={"user_id": "u1", "k": 3})).status_code == 200
