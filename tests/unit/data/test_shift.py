"""data.shift: digits' out-of-distribution split `shifted` (the val images rotated or noisy, same labels)."""

from __future__ import annotations

import pytest
import torch

from helpers import compose_config
from transfer_pipeline.data.datasets import build_data, shifted
from transfer_pipeline.errors import UserError


@pytest.mark.parametrize("how", ["rotated", "noisy"])
def test_the_shifted_split_is_the_val_split_moved_with_its_labels(how):
    bundle = build_data(compose_config(f"data.shift={how}").data, seed=0)
    (x, y), (vx, vy) = bundle.extra["shifted"].tensors, bundle.val.tensors
    assert torch.equal(y, vy) and x.shape == vx.shape
    assert (x - vx).abs().mean() > 0.3  # moved, not a copy
    again = build_data(compose_config(f"data.shift={how}").data, seed=0).extra["shifted"].tensors[0]
    assert torch.equal(x, again)  # seeded: the same split every run
    assert build_data(compose_config().data, seed=0).extra == {}  # off by default


def test_rotation_keeps_the_background_and_turns_the_image():
    x = torch.full((1, 1, 8, 8), -1.0)
    x[0, 0, :, 3:5] = 2.0  # a vertical bar on the background -1
    out = shifted(x, "rotated", 0)
    assert out.min() >= -1.0 - 1e-6 and abs(float(out[0, 0, 0, 0]) + 1.0) < 1e-6  # corners: background, not 0
    assert not torch.allclose(out, x, atol=0.1) and float(out.mean()) == pytest.approx(float(x.mean()), abs=0.25)


def test_shift_outside_digits_is_refused_naming_the_fix():
    with pytest.raises(UserError, match=r"data.shift=rotated: the shifted split is made for data=digits"):
        compose_config("data=synthetic", "data.shift=rotated")
