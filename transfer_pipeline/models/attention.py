"""Two transformers that compute the same function with differently stored attention weights.

`QKVTransformer` keeps separate q, k, v and o projections per block (`enc.N.q.weight` ...), as many
research checkpoints do; `MHATransformer` uses `torch.nn.MultiheadAttention`, which stores q, k, v
fused in one `in_proj_weight` [3*dim, dim]. `experiment=qkv_to_mha` moves weights from the first
to the second with concat rules and checks the outputs agree. Both read an image [C, H, W] as a
sequence of rows (H tokens of C*W features: an 8x8 digit is 8 tokens of 8), so they train on the
digits data too.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class QKVBlock(nn.Module):
    """Pre-norm block: x + o(attention(q, k, v)), then x + mlp; q, k, v, o are separate nn.Linear."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _mlp(dim, dim * mlp_ratio)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.num_heads

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, h, d // h).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        att = (q @ k.transpose(-2, -1) / math.sqrt(d // h)).softmax(-1)
        return self.o((att @ v).transpose(1, 2).reshape(b, t, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MHABlock(nn.Module):
    """The same block with `nn.MultiheadAttention` (fused `in_proj_weight`, `out_proj`)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _mlp(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


def image_rows(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H, C*W]: each image row is a token."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 1, 3).reshape(b, h, c * w)


class _RowTransformer(nn.Module):
    """embed (rows -> tokens) + pos -> blocks -> norm -> mean over tokens -> head."""

    blocks_attr = "enc"

    def __init__(self, block: type[nn.Module], num_classes: int, in_channels: int, image_size: int, dim: int,
                 depth: int, num_heads: int) -> None:
        super().__init__()
        self.embed = nn.Linear(in_channels * image_size, dim)
        self.pos = nn.Parameter(torch.randn(1, image_size, dim) * 0.02)
        setattr(self, self.blocks_attr, nn.ModuleList(block(dim, num_heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(image_rows(x)) + self.pos
        for blk in getattr(self, self.blocks_attr):
            x = blk(x)
        return self.head(self.norm(x).mean(1))


class QKVTransformer(_RowTransformer):
    """Blocks under `enc.N` with separate `q`, `k`, `v`, `o` projections."""

    blocks_attr = "enc"

    def __init__(self, num_classes: int = 5, in_channels: int = 1, image_size: int = 8, dim: int = 32,
                 depth: int = 2, num_heads: int = 4) -> None:
        super().__init__(QKVBlock, num_classes, in_channels, image_size, dim, depth, num_heads)


class MHATransformer(_RowTransformer):
    """Blocks under `layers.N` with `nn.MultiheadAttention` as `attn`."""

    blocks_attr = "layers"

    def __init__(self, num_classes: int = 5, in_channels: int = 1, image_size: int = 8, dim: int = 32,
                 depth: int = 2, num_heads: int = 4) -> None:
        super().__init__(MHABlock, num_classes, in_channels, image_size, dim, depth, num_heads)
