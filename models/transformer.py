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

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last: bool = False) -> torch.Tensor:
        """x: (B, L, D); mask: (B, 1, L, L) additive, 0 where attention is allowed and -inf elsewhere ->
        (B, L, D), or with `last` only the newest position's output (B, 1, D)."""
        B, L, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if last:
            q, mask, x = q[:, :, -1:], mask[:, :, -1:], x[:, -1:]
        att = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, L or 1, D/H)
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

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last: bool = False) -> torch.Tensor:
        B, L, D = x.shape
        k, v = self.kv(x).view(B, L, 2, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if last:
            x, mask = x[:, -1:], mask[:, :, -1:]
        h = self.ln1(x)
        q = self.q(h).view(B, -1, self.heads, D // self.heads).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        att = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
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

    def forward(self, x: torch.Tensor, valid: torch.Tensor, last: bool = False) -> torch.Tensor:
        """x: (B, L, D) inputs; valid: (B, L) bool, False on padding -> (B, L, D), or with `last` the
        newest position's state only (B, 1, D): what a user vector needs. Causality lets the last block
        skip the other positions' queries, about a third of an encoding's work at two blocks."""
        L = x.shape[1]
        eye = torch.eye(L, dtype=torch.bool, device=x.device)
        # causal, no padded keys; every position may see itself so all-padding rows stay finite
        allowed = torch.ones(L, L, dtype=torch.bool, device=x.device).tril() & (valid[:, None, None, :] | eye)
        # additive: on the CPU scaled_dot_product_attention is faster with a float mask than a boolean one
        mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill_(~allowed, -torch.inf)
        for j, block in enumerate(self.blocks):
            x = block(x, mask, last=last and j == len(self.blocks) - 1)
        return self.norm(x)


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
