"""Multimodal item encoder of LLM4Rec (Ma et al. 2025, eq. 1-6).

Each item becomes one token per modality (eq. 1-2):
  text         a frozen sentence-transformer embedding (computed once, outside models/) -> projection
  categorical  one EmbeddingBag per field (multi-valued fields such as genres are mean-pooled), summed
  numerical    z-scored values plus missing-value flags -> MLP
  id           an item-id embedding, only for items seen in training: new items are content-only
Cross-modal attention (eq. 3-4) lets every modality query the others with its own projections
(asymmetric: text attending to genres is not genres attending to text). Adaptive weighted fusion
(eq. 5-6) mixes the tokens with per-item softmax weights plus an MLP over their concatenation,
as a residual. The per-item weights are returned so explanations can use them and collapse onto one
modality can be spotted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FusionConfig:
    dim: int = 64
    text_dim: int = 0  # 0: no text modality
    categorical_sizes: tuple[int, ...] = ()  # vocabulary size per categorical field
    num_numerical: int = 0
    num_items: int = 0  # rows of the id embedding; 0: no id modality
    cross_attention: bool = True
    adaptive_weights: bool = True
    dropout: float = 0.1
    id_dropout: float = 0.1  # training-time chance to hide an item's id token, so content alone must work

    @property
    def modalities(self) -> tuple[str, ...]:
        present = {
            "text": self.text_dim > 0,
            "categorical": bool(self.categorical_sizes),
            "numerical": self.num_numerical > 0,
            "id": self.num_items > 0,
        }
        return tuple(m for m, on in present.items() if on)


@dataclass(frozen=True)
class ItemInputs:
    """Raw item features for N items; absent modalities are None."""

    text: torch.Tensor | None  # (N, text_dim) float32
    categorical: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per field: (indices, offsets) EmbeddingBag input
    numerical: torch.Tensor | None  # (N, 2F): z-scores with NaN -> 0, then missing flags
    id_known: torch.Tensor  # (N,) bool: has a trained id embedding

    @property
    def num_items(self) -> int:
        return int(self.id_known.shape[0])


class ModalityEncoders(nn.Module):
    """Eq. 1-2: one D-dimensional token per modality."""

    def __init__(self, c: FusionConfig) -> None:
        super().__init__()
        self.config = c
        self.text = nn.Linear(c.text_dim, c.dim) if c.text_dim else None
        self.categorical = nn.ModuleList(nn.EmbeddingBag(n, c.dim, mode="mean") for n in c.categorical_sizes)
        self.numerical = (
            nn.Sequential(nn.Linear(c.num_numerical, c.dim), nn.GELU(), nn.Linear(c.dim, c.dim))
            if c.num_numerical
            else None
        )
        self.id = nn.Embedding(c.num_items, c.dim) if c.num_items else None
        for emb in [*self.categorical, *([self.id] if self.id is not None else [])]:
            nn.init.normal_(emb.weight, std=0.02)

    def forward(self, x: ItemInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """-> tokens (N, M, D) and available (N, M) bool."""
        n = x.num_items
        tokens, available = [], []
        ones = torch.ones(n, dtype=torch.bool)
        if self.text is not None and x.text is not None:
            tokens.append(self.text(x.text))
            available.append(ones)
        if len(self.categorical):
            tokens.append(sum(bag(idx, off) for bag, (idx, off) in zip(self.categorical, x.categorical, strict=True)))
            available.append(ones)
        if self.numerical is not None and x.numerical is not None:
            tokens.append(self.numerical(x.numerical))
            available.append(ones)
        if self.id is not None:
            known = x.id_known
            if self.training and self.config.id_dropout > 0:
                known = known & (torch.rand(n) >= self.config.id_dropout)
            tokens.append(self._id_rows(n) * known.unsqueeze(-1))
            available.append(known)
        return torch.stack(tokens, dim=1), torch.stack(available, dim=1)

    def _id_rows(self, n: int) -> torch.Tensor:
        """(n, D): the id table, zero-padded for items added after training (they have no id row)."""
        assert self.id is not None
        w = self.id.weight[:n]
        return torch.cat([w, w.new_zeros(n - w.shape[0], w.shape[1])]) if n > w.shape[0] else w


class CrossModalAttention(nn.Module):
    """Eq. 3-4: A_{m->n} = softmax(Q_m K_n^T / sqrt(d)) over the other modalities n != m;
    h_m <- h_m + W_o sum_n A_{m->n} V_n h_n. Projections are per modality, hence asymmetric."""

    def __init__(self, num_modalities: int, dim: int) -> None:
        super().__init__()
        scale = dim**-0.5
        self.q = nn.Parameter(torch.randn(num_modalities, dim, dim) * scale)
        self.k = nn.Parameter(torch.randn(num_modalities, dim, dim) * scale)
        self.v = nn.Parameter(torch.randn(num_modalities, dim, dim) * scale)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        """h: (N, M, D), available: (N, M) -> (N, M, D)."""
        x = self.norm(h)
        q = torch.einsum("nmd,mde->nme", x, self.q)
        k = torch.einsum("nmd,mde->nme", x, self.k)
        v = torch.einsum("nmd,mde->nme", x, self.v)
        scores = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5  # (N, M, M): query m, key n
        M = h.shape[1]
        allowed = available.unsqueeze(1) & ~torch.eye(M, dtype=torch.bool)  # other, present modalities
        weights = torch.softmax(scores.masked_fill(~allowed, -torch.inf), dim=-1).nan_to_num(0.0)
        # only present modalities with someone to listen to are updated (no bias-only updates)
        update = available & allowed.any(-1)
        return h + self.out(weights @ v) * update.unsqueeze(-1)


class AdaptiveFusion(nn.Module):
    """Eq. 5-6: alpha = softmax_m(w^T tanh(W h_m + b)); z = sum_m alpha_m h_m + MLP([h_1; ...; h_M])."""

    def __init__(self, num_modalities: int, dim: int, adaptive: bool, dropout: float) -> None:
        super().__init__()
        self.adaptive = adaptive
        self.score = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1, bias=False))
        self.mix = nn.Sequential(
            nn.Linear(num_modalities * dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim)
        )

    def forward(self, h: torch.Tensor, available: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h: (N, M, D) -> fused (N, D) and modality weights alpha (N, M)."""
        logits = self.score(h).squeeze(-1) if self.adaptive else torch.zeros(h.shape[:2])
        # an item with no modality at all (ids-only model, item unseen in training) gets alpha = 0 and
        # the MLP's constant output, not NaN
        alpha = torch.softmax(logits.masked_fill(~available, -torch.inf), dim=-1).nan_to_num(0.0)
        weighted = (alpha.unsqueeze(-1) * h).sum(1)
        return weighted + self.mix((h * available.unsqueeze(-1)).flatten(1)), alpha


class ItemFusion(nn.Module):
    """Items' raw features -> fused item vectors in the space the user model scores in."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        m = len(config.modalities)
        if m == 0:
            raise ValueError("the item encoder needs at least one modality")
        self.encoders = ModalityEncoders(config)
        self.cross = CrossModalAttention(m, config.dim) if config.cross_attention and m > 1 else None
        self.fusion = AdaptiveFusion(m, config.dim, config.adaptive_weights, config.dropout)

    def forward(self, x: ItemInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """-> item vectors (N, D), modality weights (N, M) in `config.modalities` order."""
        tokens, available = self.encoders(x)
        if self.cross is not None:
            tokens = self.cross(tokens, available)
        return self.fusion(tokens, available)
