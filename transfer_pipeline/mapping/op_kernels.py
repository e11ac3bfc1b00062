"""Mapping ops, torch half: the kernel each LoadEntry applies when loading.

Each kernel takes the source tensors (in the entry's `sources` order) and the arguments its
spec's shape plan returned (op_specs.py), and returns the target tensor. Shapes were checked by
the plan already. `KERNELS` is keyed by `OpSpec.kernel_name`; the two tables are checked against
each other at import, so an op with a spec but no kernel (or the reverse) fails at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .op_specs import OPS


def copy(tensors: Sequence[torch.Tensor], **_: Any) -> torch.Tensor:
    return tensors[0]


def concat(tensors: Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """Separate parts (q, k, v projections) into one fused tensor (`in_proj_weight`)."""
    return torch.cat(list(tensors), dim)


def split(tensors: Sequence[torch.Tensor], dim: int, sizes: Sequence[int], index: int) -> torch.Tensor:
    """Part `index` of a fused tensor cut along `dim` into `sizes` (one entry per part)."""
    return torch.split(tensors[0], list(sizes), dim)[index]


def transpose(tensors: Sequence[torch.Tensor], dims: Sequence[int] = (0, 1)) -> torch.Tensor:
    """E.g. a Conv1D-style `[in, out]` weight into `nn.Linear`'s `[out, in]`."""
    return tensors[0].transpose(*dims).contiguous()


def reshape(tensors: Sequence[torch.Tensor], shape: Sequence[int]) -> torch.Tensor:
    return tensors[0].reshape(tuple(shape))


def adapt_channels(tensors: Sequence[torch.Tensor], channels: int) -> torch.Tensor:
    """A conv weight `[out, in, *k]` for `channels` input channels, as timm's `adapt_input_conv`.

    To 1 channel: sum over the input channels (a grey image through an RGB conv). To N: repeat
    the channels and scale by in/N, so an input with equal channels gives the same output.
    """
    w = tensors[0]
    c_in = w.shape[1]
    if channels == c_in:
        return w
    dtype = w.dtype
    w = w.float()
    if channels == 1:
        out = w.sum(dim=1, keepdim=True)
    else:
        repeat = math.ceil(channels / c_in)
        out = w.repeat(1, repeat, *([1] * (w.dim() - 2)))[:, :channels] * (c_in / channels)
    return out.to(dtype)


def select(tensors: Sequence[torch.Tensor], indices: Sequence[int], dim: int = 0) -> torch.Tensor:
    """Rows of a classifier (a class subset or a reordering): target row i = source row indices[i]."""
    t = tensors[0]
    return t.index_select(dim, torch.tensor(list(indices), dtype=torch.long, device=t.device))


def interpolate(tensors: Sequence[torch.Tensor], dims: Sequence[int], size: Sequence[int], mode: str,
                grid: bool = False, prefix_tokens: int = 0, align_corners: bool = False) -> torch.Tensor:
    """Resize `dims` of a tensor to `size` (a kernel), or a token grid (`grid`: a position embedding).

    With `grid`, dim `dims[0]` holds `prefix_tokens` (class token ...) and then an n*n grid of
    tokens: the prefix is kept, the grid is resized to m*m (`size[0]` = prefix + m*m).
    """
    t = tensors[0]
    if not dims:
        return t
    dtype = t.dtype
    x = t.float()
    if grid:
        d = dims[0]
        x = x.movedim(d, -1)
        prefix, body = x[..., :prefix_tokens], x[..., prefix_tokens:]
        n, m = math.isqrt(body.shape[-1]), math.isqrt(size[0] - prefix_tokens)
        lead = body.shape[:-1]
        body = body.reshape(1, -1, n, n)
        body = _resize(body, (m, m), mode, align_corners).reshape(*lead, m * m)
        return torch.cat([prefix, body], -1).movedim(-1, d).to(dtype)
    rest = [k for k in range(x.dim()) if k not in dims]
    perm = rest + list(dims)
    y = x.permute(perm)
    lead = y.shape[: len(rest)]
    y = y.reshape(1, -1, *y.shape[len(rest):])
    y = _resize(y, tuple(size), mode, align_corners).reshape(*lead, *size)
    return y.permute([perm.index(k) for k in range(x.dim())]).contiguous().to(dtype)


def _resize(x: torch.Tensor, size: tuple[int, ...], mode: str, align_corners: bool) -> torch.Tensor:
    corners = align_corners if mode in ("linear", "bilinear", "bicubic", "trilinear") else None
    return F.interpolate(x, size=size, mode=mode, align_corners=corners)


KERNELS: dict[str, Callable[..., torch.Tensor]] = {
    "copy": copy, "concat": concat, "split": split, "transpose": transpose, "reshape": reshape,
    "adapt_channels": adapt_channels, "select": select, "interpolate": interpolate,
}
_specs = {spec.kernel_name for spec in OPS.values()}
if _specs != set(KERNELS):
    raise ImportError(f"mapping ops: specs without a kernel {sorted(_specs - set(KERNELS))}, "
                      f"kernels without a spec {sorted(set(KERNELS) - _specs)} (op_specs.OPS vs op_kernels.KERNELS)")


def apply_op(op: str, tensors: Sequence[torch.Tensor], args: tuple[tuple[str, Any], ...] = ()) -> torch.Tensor:
    return KERNELS[op](tensors, **dict(args))
