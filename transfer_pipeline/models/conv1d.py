"""A GPT-2-style transformer whose linear layers are `Conv1D` (weights stored [in, out]).

GPT-2 checkpoints store every projection as `x @ weight + bias` with `weight` [in, out] and the
q, k, v projections fused in `attn.c_attn` [dim, 3*dim]; `nn.Linear` and `nn.MultiheadAttention`
store [out, in]. `experiment=conv1d_to_mha` converts `GPT2StyleTransformer` weights into
`MHATransformer` (models/attention.py) by transpose and rename rules alone. Attention is not
causal here, so both models compute the same function.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .attention import image_rows


class Conv1D(nn.Module):
    """GPT-2's linear layer: `x @ weight + bias`, `weight` [in_features, out_features]."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(in_features, out_features) / math.sqrt(in_features))
        self.bias = nn.Parameter(torch.randn(out_features) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


class GPT2Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.c_attn = Conv1D(dim, 3 * dim)  # q | k | v along the output features
        self.c_proj = Conv1D(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.num_heads
        q, k, v = (y.view(b, t, h, d // h).transpose(1, 2) for y in self.c_attn(x).split(d, dim=-1))
        att = (q @ k.transpose(-2, -1) / math.sqrt(d // h)).softmax(-1)
        return self.c_proj((att @ v).transpose(1, 2).reshape(b, t, d))


class GPT2MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = Conv1D(dim, hidden)
        self.act = nn.GELU()
        self.c_proj = Conv1D(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = GPT2Attention(dim, num_heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = GPT2MLP(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2StyleTransformer(nn.Module):
    """GPT-2 names: `wte` (token embedding), `wpe` (positions), blocks `h.N`, `ln_f`; plus a `head`.

    Reads an image as a sequence of rows, like MHATransformer, with the same arguments; `wte`
    is a Conv1D here (tokens are image rows, not word ids).
    """

    def __init__(self, num_classes: int = 5, in_channels: int = 1, image_size: int = 8, dim: int = 32,
                 depth: int = 2, num_heads: int = 4) -> None:
        super().__init__()
        self.wte = Conv1D(in_channels * image_size, dim)
        self.wpe = nn.Embedding(image_size, dim)
        self.h = nn.ModuleList(GPT2Block(dim, num_heads) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.wte(image_rows(x)) + self.wpe.weight
        for blk in self.h:
            x = blk(x)
        return self.head(self.ln_f(x).mean(1))
