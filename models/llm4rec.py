"""The LLM4Rec recommender (Ma et al. 2025): a generative next-item model over fused item vectors.

A causal transformer reads the user's history as a sequence of fused multimodal item vectors
(`models.fusion`) and predicts the next item by a dot product with the same item vectors: the user
vector and the item vectors share one space, which is what the vector index serves. Training is a
softmax over the whole catalogue, or a sampled softmax with logQ correction (Yi et al. 2019) when
the catalogue is too large, with the debiasing terms of `models.debias`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from models.debias import FairnessAdversary, group_loss_gap, ipw_weights, log_popularity, propensities
from models.fusion import FusionConfig, ItemFusion, ItemInputs
from models.scoring import PAD, HistoryBatch, TrainData
from models.sequences import training_windows, window_batches
from models.transformer import CausalTransformer, xavier_init

# inference inputs: (item rows, position rows), then the same for the first block's keys and values
_InputRows = tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]


@dataclass(frozen=True)
class LLM4RecConfig:
    fusion: FusionConfig = field(default_factory=FusionConfig)
    layers: int = 2
    heads: int = 1
    dropout: float = 0.2
    max_len: int = 50
    lr: float = 1e-3
    batch_size: int = 64
    # True: each user's newest max_len + 1 items only. Off: on ml-latest-small's long histories that
    # discarded most transitions and cost LLM4Rec 40% of its NDCG@10 (BENCHMARKS.md, SASRec-CE settings)
    newest_only: bool = False
    layout: str = "sasrec"  # transformer block: "sasrec" or "pre-norm" (models.transformer)
    length_buckets: bool = False  # batches of windows of similar length (models.sequences.window_batches)
    ipw: bool = True
    eta_item: float = 0.25  # propensity exponents; 0 switches a factor off
    eta_user: float = 0.0
    ipw_clip: float = 10.0
    pop_deconfound: bool = True
    lambda_fair: float = 0.0
    lambda_parity: float = 0.0  # weight of the per-group loss gap (needs num_groups)
    num_groups: int = 0  # classes of the sensitive attribute the adversary predicts
    full_softmax_max_items: int = 50_000  # larger catalogues train with a sampled softmax
    num_negatives: int = 4096

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LLM4RecConfig:
        fusion = dict(d["fusion"])
        fusion["categorical_sizes"] = tuple(fusion["categorical_sizes"])
        # a checkpoint written before a field existed was trained the way the field's old behaviour was
        before = {"layout": "pre-norm"}
        return cls(**{**before, **d, "fusion": FusionConfig(**fusion)})


class LLM4Rec(nn.Module):
    name = "llm4rec"
    log_pop: torch.Tensor  # (N,) buffers registered in __init__
    p_item: torch.Tensor
    p_user: torch.Tensor  # (U,)

    def __init__(
        self,
        config: LLM4RecConfig,
        items: ItemInputs,
        item_pop: torch.Tensor,  # (N,) training interaction counts
        user_activity: torch.Tensor,  # (U,) training interaction counts
        user_groups: torch.Tensor | None = None,  # (U,) sensitive attribute codes, -1 unknown
    ) -> None:
        super().__init__()
        self.config = c = config
        self.items = items
        self.fusion = ItemFusion(c.fusion)
        self.pos_emb = nn.Embedding(c.max_len, c.fusion.dim)
        self.drop = nn.Dropout(c.dropout)
        self.encoder = CausalTransformer(c.fusion.dim, c.layers, c.heads, c.dropout, layout=c.layout)
        self.gamma = nn.Parameter(torch.zeros(()))  # learned popularity effect (PDA's gamma)
        self.serve_gamma: float | None = None  # None: the learned gamma; 0: do(popularity) fully removed
        self.register_buffer("log_pop", log_popularity(item_pop.float()), persistent=False)
        p_item, p_user = propensities(item_pop.float(), user_activity.float(), c.eta_item, c.eta_user)
        self.register_buffer("p_item", p_item, persistent=False)
        self.register_buffer("p_user", p_user, persistent=False)
        self.user_groups = user_groups
        self.adversary = FairnessAdversary(c.fusion.dim, c.num_groups) if c.lambda_fair > 0 and c.num_groups else None
        xavier_init(self)  # every matrix, the item encoders' embeddings included: higher validation NDCG@10
        # one scalar that must travel far from 0: its own, larger step
        rest = [p for n, p in self.named_parameters() if n != "gamma"]
        groups: list[dict[str, Any]] = [{"params": rest}, {"params": [self.gamma], "lr": 20 * c.lr}]
        self.optimizer = torch.optim.Adam(groups, lr=c.lr)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self._rows: tuple[torch.Tensor, tuple[int, ...], _InputRows] | None = None  # `_input_rows`

    # -- item side -------------------------------------------------------------------------------
    def item_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused item vectors (N, D) and modality weights (N, M); cached outside training."""
        if self.training:
            return self.fusion(self.items)
        if self._cache is None:
            with torch.no_grad():
                self._cache = self.fusion(self.items)
        return self._cache

    def set_items(self, items: ItemInputs) -> None:
        """Swap in a catalogue (e.g. with new, content-only items); ids beyond training stay unknown."""
        self.items, self._cache, self._rows = items, None, None

    # -- user side -------------------------------------------------------------------------------
    def encode(self, seq: torch.Tensor, item_vecs: torch.Tensor, last: bool = False) -> torch.Tensor:
        """seq: (B, L) left-padded item ids -> hidden states (B, L, D), or with `last` (B, 1, D)."""
        valid = seq != PAD
        pos = torch.arange(seq.shape[1] - 1, -1, -1)  # positions count back from the newest item
        if self.training or torch.is_grad_enabled():
            x = item_vecs[seq.clamp(min=0)] * self.config.fusion.dim**0.5 + self.pos_emb(pos)
            return self.encoder(self.drop(x) * valid.unsqueeze(-1), valid, last=last)
        (items, positions), kv_rows = self._input_rows(item_vecs)
        # no padding zeroed: no valid position attends to padding
        idx, shape = seq.clamp(min=0).flatten(), seq.shape
        x = items.index_select(0, idx).view(*shape, -1).add_(positions[pos])
        kv = None if kv_rows is None else kv_rows[0].index_select(0, idx).view(*shape, -1).add_(kv_rows[1][pos])
        return self.encoder(x, valid, last=last, first_kv=kv)

    def _input_rows(self, item_vecs: torch.Tensor) -> _InputRows:
        """Inference: the encoder's inputs as an item's row plus a position's row, and so the first
        block's keys and values when it has them (`first_kv`; linear in the input): serving a user then
        starts with gathers and adds. Kept while `item_vecs` is the tensor they were built from and the
        weights they read are unchanged (their in-place version counters: any optimizer step moves them)."""
        versions = tuple(p._version for p in (self.pos_emb.weight, *self.encoder.blocks[0].parameters()))
        if self._rows is None or self._rows[0] is not item_vecs or self._rows[1] != versions:
            items, positions = item_vecs * self.config.fusion.dim**0.5, self.pos_emb.weight
            item_kv, pos_kv = self.encoder.first_kv(items, bias=False), self.encoder.first_kv(positions)
            kv = None if item_kv is None or pos_kv is None else (item_kv, pos_kv)
            self._rows = (item_vecs, versions, ((items, positions), kv))
        return self._rows[2]

    def user_vectors(self, history: torch.Tensor) -> torch.Tensor:
        """history: (B, L) -> (B, D), the state after the newest item."""
        items, _ = self.item_vectors()
        return self.encode(history[:, -self.config.max_len :], items, last=True)[:, -1]

    def popularity_term(self, gamma: float | None = None) -> torch.Tensor:
        """(N,) gamma * log(1 + pop); zero when deconfounding is off."""
        if not self.config.pop_deconfound:
            return torch.zeros_like(self.log_pop)
        g = self.gamma.detach() if gamma is None else torch.tensor(gamma)
        return g * self.log_pop

    @torch.no_grad()
    def score(self, batch: HistoryBatch) -> torch.Tensor:
        self.eval()
        items, _ = self.item_vectors()
        return self.user_vectors(batch.items) @ items.T + self.popularity_term(self.serve_gamma)

    # -- training --------------------------------------------------------------------------------
    def fit_epoch(self, data: TrainData, rng: np.random.Generator) -> float:
        self.train()
        self._cache = self._rows = None
        losses = []
        windows = training_windows(data.sequences(), self.config.max_len, self.config.newest_only)
        for users, inp, tgt in window_batches(windows, self.config.batch_size, rng, self.config.length_buckets):
            loss = self.batch_loss(users, inp, tgt)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
        return float(np.mean(losses))

    def batch_loss(self, users: torch.Tensor, inp: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        items, _ = self.fusion(self.items)
        h = self.encode(inp, items)  # (B, L, D)
        mask = tgt != PAD
        rows = torch.arange(inp.shape[0]).unsqueeze(1).expand_as(tgt)[mask]  # batch row of each target
        targets = tgt[mask]
        ce = self._cross_entropy(h[mask], items, targets)
        if self.config.ipw:
            ce = ce * ipw_weights(self.p_item[targets] * self.p_user[users[rows]], self.config.ipw_clip)
        loss = ce.mean()
        if self.config.lambda_parity > 0 and self.user_groups is not None:
            loss = loss + self.config.lambda_parity * group_loss_gap(ce, self.user_groups[users[rows]])
        if self.adversary is not None and self.user_groups is not None:
            loss = loss + self.adversary.loss(h[:, -1], self.user_groups[users], self.config.lambda_fair)
        return loss

    def _cross_entropy(self, h: torch.Tensor, items: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """h: (P, D) -> (P,) per-target losses, full or sampled softmax."""
        pop_term = self.gamma * self.log_pop if self.config.pop_deconfound else None
        if items.shape[0] <= self.config.full_softmax_max_items:
            if pop_term is not None:  # one matmul instead of a second pass over the (P, N) logits
                h = torch.cat([h, torch.ones(h.shape[0], 1)], dim=1)
                items = torch.cat([items, pop_term.unsqueeze(1)], dim=1)
            return nn.functional.cross_entropy(h @ items.T, targets, reduction="none")
        return self._sampled_cross_entropy(h, items, targets, pop_term)

    def _sampled_cross_entropy(
        self, h: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, pop_term: torch.Tensor | None
    ) -> torch.Tensor:
        """K shared negatives drawn by popularity^0.75, each logit minus log(K q_j) (logQ), so that
        exp(s_pos) + sum_k exp(s_k) / (K q_k) estimates the full softmax's normaliser."""
        q = (self.log_pop.exp() ** 0.75).clamp(min=1e-6)
        q = q / q.sum()
        k = self.config.num_negatives
        negs = torch.multinomial(q, k, replacement=True)  # (K,)
        bias = pop_term if pop_term is not None else torch.zeros_like(q)
        pos = (h * items[targets]).sum(-1) + bias[targets]  # (P,)
        neg = h @ items[negs].T + bias[negs] - torch.log(q[negs] * k)  # (P, K)
        neg = neg.masked_fill(targets.unsqueeze(1) == negs.unsqueeze(0), -torch.inf)  # accidental hits
        logits = torch.cat([pos.unsqueeze(1), neg], dim=1)
        return nn.functional.cross_entropy(logits, torch.zeros_like(targets), reduction="none")

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        self._cache = self._rows = None
        return super().load_state_dict(state, strict=strict, assign=assign)

    def modality_weights(self) -> dict[str, float]:
        """Mean fusion weight per modality over the catalogue (collapse shows as one weight near 1)."""
        _, alpha = self.item_vectors()
        return dict(zip(self.config.fusion.modalities, alpha.mean(0).tolist(), strict=True))
