"""Unit tests for transfer_pipeline.mapping.op_kernels: each tensor op against a reference written out by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from transfer_pipeline.mapping.op_kernels import KERNELS, apply_op
from transfer_pipeline.mapping.op_specs import OPS


def test_every_rule_op_has_a_tensor_op():
    assert {spec.kernel_name for spec in OPS.values()} == set(KERNELS)


def test_copy_returns_the_source():
    t = torch.randn(3)
    assert apply_op("copy", [t]) is t


def test_concat_stacks_parts_in_order_along_dim():
    q, k, v = torch.randn(4, 3), torch.randn(2, 3), torch.randn(4, 3)
    out = apply_op("concat", [q, k, v], (("dim", 0),))
    assert torch.equal(out[:4], q) and torch.equal(out[4:6], k) and torch.equal(out[6:], v)
    a, b = torch.randn(2, 3), torch.randn(2, 5)
    assert torch.equal(apply_op("concat", [a, b], (("dim", 1),)), torch.cat([a, b], 1))


def test_split_gives_each_part():
    fused = torch.arange(24.0).reshape(6, 4)
    parts = [apply_op("split", [fused], (("dim", 0), ("index", i), ("sizes", (1, 2, 3)))) for i in range(3)]
    assert [tuple(p.shape) for p in parts] == [(1, 4), (2, 4), (3, 4)]
    assert torch.equal(torch.cat(parts), fused)
    cols = apply_op("split", [fused], (("dim", 1), ("index", 1), ("sizes", (2, 2))))
    assert torch.equal(cols, fused[:, 2:])


def test_transpose_is_conv1d_to_linear():
    w_conv1d = torch.randn(5, 7)  # [in, out]
    b = torch.randn(7)
    x = torch.randn(3, 5)
    w = apply_op("transpose", [w_conv1d], (("dims", (0, 1)),))
    assert w.shape == (7, 5) and w.is_contiguous()
    torch.testing.assert_close(F.linear(x, w, b), x @ w_conv1d + b)
    t = torch.randn(2, 3, 4)
    assert torch.equal(apply_op("transpose", [t], (("dims", (0, 2)),)), t.transpose(0, 2))


def test_reshape():
    t = torch.randn(8, 32)
    assert torch.equal(apply_op("reshape", [t], (("shape", (1, 8, 32)),))[0], t)
    conv1x1 = torch.randn(6, 4, 1, 1)
    assert torch.equal(apply_op("reshape", [conv1x1], (("shape", (6, 4)),)), conv1x1[:, :, 0, 0])


def timm_adapt_input_conv(in_chans: int, conv_weight: torch.Tensor) -> torch.Tensor:
    """timm.models._manipulate.adapt_input_conv for a 3-channel weight, written out as reference."""
    conv_type = conv_weight.dtype
    conv_weight = conv_weight.float()
    O, I, J, K = conv_weight.shape
    if in_chans == 1:
        conv_weight = conv_weight.sum(dim=1, keepdim=True)
    elif in_chans != 3:
        repeat = int(math.ceil(in_chans / 3))
        conv_weight = conv_weight.repeat(1, repeat, 1, 1)[:, :in_chans, :, :]
        conv_weight *= (3 / float(in_chans))
    return conv_weight.to(conv_type)


@pytest.mark.parametrize("channels", [1, 2, 3, 4, 7])
def test_adapt_channels_matches_timm_for_rgb_weights(channels):
    w = torch.randn(8, 3, 3, 3)
    out = apply_op("adapt_channels", [w], (("channels", channels),))
    assert out.shape == (8, channels, 3, 3)
    torch.testing.assert_close(out, timm_adapt_input_conv(channels, w), rtol=0, atol=0)


def test_adapt_channels_keeps_the_output_for_equal_channels():
    torch.manual_seed(0)
    w1 = torch.randn(4, 1, 3, 3)
    grey = torch.randn(2, 1, 6, 6)
    w3 = apply_op("adapt_channels", [w1], (("channels", 3),))
    torch.testing.assert_close(F.conv2d(grey.expand(-1, 3, -1, -1), w3), F.conv2d(grey, w1), rtol=0, atol=1e-5)
    rgb_w = torch.randn(4, 3, 3, 3)
    w_grey = apply_op("adapt_channels", [rgb_w], (("channels", 1),))
    torch.testing.assert_close(F.conv2d(grey, w_grey), F.conv2d(grey.expand(-1, 3, -1, -1), rgb_w), rtol=0, atol=1e-5)


def test_adapt_channels_keeps_dtype():
    w = torch.randn(4, 3, 3, 3, dtype=torch.float16)
    assert apply_op("adapt_channels", [w], (("channels", 1),)).dtype == torch.float16


def test_select_picks_rows_in_the_given_order():
    head = torch.arange(10.0).reshape(5, 2)
    out = apply_op("select", [head], (("dim", 0), ("indices", (4, 1, 3))))
    assert torch.equal(out, head[[4, 1, 3]])
    bias = torch.arange(5.0)
    assert torch.equal(apply_op("select", [bias], (("dim", 0), ("indices", (0, 0)))), torch.tensor([0.0, 0.0]))


def interp_args(**kw):
    base = {"grid": False, "prefix_tokens": 0, "align_corners": False}
    return tuple(sorted({**base, **kw}.items()))


def test_interpolate_kernel_matches_f_interpolate():
    k = torch.randn(4, 2, 3, 3)
    out = apply_op("interpolate", [k], interp_args(dims=(2, 3), size=(5, 5), mode="bilinear"))
    assert out.shape == (4, 2, 5, 5)
    torch.testing.assert_close(out, F.interpolate(k, size=(5, 5), mode="bilinear", align_corners=False))


def test_interpolate_leading_dim():
    pos = torch.randn(16, 6)  # 16 positions of 6 features -> 8
    out = apply_op("interpolate", [pos], interp_args(dims=(0,), size=(8,), mode="linear"))
    ref = F.interpolate(pos.T[None], size=8, mode="linear", align_corners=False)[0].T
    torch.testing.assert_close(out, ref)


def test_interpolate_position_embedding_grid_keeps_class_token():
    torch.manual_seed(0)
    cls, grid = torch.randn(1, 1, 6), torch.randn(1, 16, 6)  # 4x4 grid of 6-dim embeddings
    pos = torch.cat([cls, grid], 1)
    out = apply_op("interpolate", [pos], interp_args(dims=(1,), size=(1 + 36,), mode="bicubic", grid=True,
                                                     prefix_tokens=1))
    assert out.shape == (1, 37, 6)
    assert torch.equal(out[:, :1], cls)
    ref = F.interpolate(grid.reshape(1, 4, 4, 6).permute(0, 3, 1, 2), size=(6, 6), mode="bicubic",
                        align_corners=False).permute(0, 2, 3, 1).reshape(1, 36, 6)
    torch.testing.assert_close(out[:, 1:], ref)


def test_interpolate_to_the_same_size_is_identity():
    t = torch.randn(2, 3, 4, 4)
    assert torch.equal(apply_op("interpolate", [t], interp_args(dims=(), size=(), mode="nearest")), t)
    torch.testing.assert_close(apply_op("interpolate", [t], interp_args(dims=(2, 3), size=(4, 4), mode="bilinear")), t)


def test_interpolate_half_precision_is_computed_in_float():
    t = torch.randn(2, 2, 3, 3, dtype=torch.bfloat16)
    out = apply_op("interpolate", [t], interp_args(dims=(2, 3), size=(5, 5), mode="bicubic"))
    assert out.dtype == torch.bfloat16 and out.shape == (2, 2, 5, 5)


def test_a_spec_without_a_kernel_fails_at_import(monkeypatch):
    import dataclasses
    import importlib

    from transfer_pipeline.mapping import op_kernels, op_specs

    monkeypatch.setitem(op_specs.OPS, "mirror", dataclasses.replace(op_specs.OPS["transpose"], name="mirror"))
    try:
        with pytest.raises(ImportError, match="specs without a kernel \\['mirror'\\]"):
            importlib.reload(op_kernels)
    finally:
        monkeypatch.undo()
        importlib.reload(op_kernels)
