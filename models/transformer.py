"""A small causal transformer over left-padded sequences: pre-norm blocks (GPT-2 layout, as in nanoGPT)
or the original SASRec block.

Written on `scaled_dot_product_attention` rather than `nn.TransformerEncoderLayer`: on 2 CPU cores the
latter's training path was ~30x slower for (128, 200, 64) batches (measured, torch 2.13).
"""

from __future__ import annotations

import torch
from torch import nn


class CausalBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, last: bool = False, kv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, L, D); mask: (B, 1, L, L) additive, 0 where attention is allowed and -inf elsewhere, or
        None for causal attention without padding -> (B, L, D), or with `last` only the newest
        position's output (B, 1, D). (`kv` is `SASRecBlock`'s; this block computes its own.)"""
        B, L, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if last:
            q, mask, x = q[:, :, -1:], _last_row(mask), x[:, -1:]
        att = _attention(q, k, v, mask, last, 0.0)  # (B, H, L or 1, D/H)
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(B, -1, D)))
        return x + self.drop(self.ffn(self.ln2(x)))


class SASRecBlock(nn.Module):
    """The original SASRec block (Kang & McAuley 2018, as in its reference implementations): only the
    queries are layer-normed and the attention's residual starts from them, so the residual stream is
    re-normalised in every block; ReLU feed-forward with dropout inside; dropout on attention weights."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.kv = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout), nn.ReLU(), nn.Linear(dim, dim),
                                 nn.Dropout(dropout))  # fmt: skip
        self.dropout = dropout

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, last: bool = False, kv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """As `CausalBlock.forward`; `kv`: `self.kv(x)` (B, L, 2D) when the caller already has it
        (`first_kv`)."""
        B, L, D = x.shape
        k, v = (self.kv(x) if kv is None else kv).view(B, L, 2, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if last:
            x, mask = x[:, -1:], _last_row(mask)
        h = self.ln1(x)
        q = self.q(h).view(B, -1, self.heads, D // self.heads).transpose(1, 2)
        att = _attention(q, k, v, mask, last, self.dropout if self.training else 0.0)
        x = self.ln2(h + self.proj(att.transpose(1, 2).reshape(B, -1, D)))
        return x + self.ffn(x)


class CausalTransformer(nn.Module):
    def __init__(self, dim: int, layers: int, heads: int, dropout: float, layout: str = "pre-norm") -> None:
        super().__init__()
        if layout == "sasrec":
            self.blocks = nn.ModuleList(SASRecBlock(dim, heads, dropout) for _ in range(layers))
        else:
            self.blocks = nn.ModuleList(CausalBlock(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor, last: bool = False, first_kv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, L, D) inputs; valid: (B, L) bool, False on padding -> (B, L, D), or with `last` the
        newest position's state only (B, 1, D): what a user vector needs. Causality lets the last block
        skip the other positions' queries, about a third of an encoding's work at two blocks.
        `first_kv`: the first `SASRecBlock`'s keys and values (B, L, 2D), when the caller has them."""
        # inference only: training keeps the explicit mask, so its numerics (and a seed's run) stay as measured
        mask = None if not self.training and bool(valid.all()) else _padding_mask(valid, x.dtype)
        for j, block in enumerate(self.blocks):
            x = block(x, mask, last=last and j == len(self.blocks) - 1, kv=first_kv if j == 0 else None)
        return self.norm(x)

    def first_kv(self, x: torch.Tensor, bias: bool = True) -> torch.Tensor | None:
        """The first block's keys and values of inputs `x` (..., D) -> (..., 2D), `bias` added or not:
        linear in the input, so an input's are the sum of its parts' (what `LLM4Rec` serves from);
        None for the pre-norm block, whose keys are taken after a layer norm."""
        first = self.blocks[0]
        if not isinstance(first, SASRecBlock):
            return None
        return first.kv(x) if bias else x @ first.kv.weight.T


def _padding_mask(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, L, L) additive mask: causal, no padded keys; every position may see itself, so that rows of
    padding stay finite (their outputs are never read). Additive: on the CPU scaled_dot_product_attention
    is faster with a float mask than a boolean one."""
    L = valid.shape[1]
    eye = torch.eye(L, dtype=torch.bool, device=valid.device)
    allowed = torch.ones(L, L, dtype=torch.bool, device=valid.device).tril() & (valid[:, None, None, :] | eye)
    return torch.zeros(allowed.shape, dtype=dtype, device=valid.device).masked_fill_(~allowed, -torch.inf)


def _last_row(mask: torch.Tensor | None) -> torch.Tensor | None:
    return None if mask is None else mask[:, :, -1:]


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, last: bool,
               dropout: float) -> torch.Tensor:  # fmt: skip
    """Causal attention; `mask` None: no padding, so the causal kernel needs no mask (and the newest
    position's query, `last`, sees every key)."""
    causal = mask is None and not last
    return nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)


def xavier_init(model: nn.Module) -> None:
    """Xavier-normal weights for every matrix (embeddings included), as the reference SASRec
    implementations do; padding rows stay zero. PyTorch's defaults with N(0, 0.02) embeddings trained
    a clearly weaker SASRec (BENCHMARKS.md, SASRec-CE settings)."""
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if p.dim() > 1:
                nn.init.xavier_normal_(p)
                if isinstance(module, nn.Embedding) and module.padding_idx is not None and name == "weight":
                    with torch.no_grad():
                        p[module.padding_idx].zero_()
