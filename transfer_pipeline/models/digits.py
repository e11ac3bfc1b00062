"""A small CNN for 8x8 digit images, and its shipped pretrained weights (digits 0-4)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

ASSETS = Path(__file__).resolve().parent.parent / "assets"
PRETRAINED_0TO4 = ASSETS / "digits_cnn_0to4.safetensors"


def conv_block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class DigitsCNN(nn.Module):
    """stem -> block1 -> block2 ... -> global average pool -> (neck) -> head.

    `widths` sets the stem and block widths, so `widths=[16, 32]` is a shallower model with
    no block2; `neck=True` adds a Linear+ReLU before the head (a layer a checkpoint may lack).
    """

    def __init__(self, num_classes: int = 5, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64),
                 neck: bool = False) -> None:
        super().__init__()
        widths = list(widths)
        self.stem = conv_block(in_channels, widths[0], pool=False)
        for i, (c_in, c_out) in enumerate(zip(widths, widths[1:]), start=1):
            self.add_module(f"block{i}", conv_block(c_in, c_out, pool=True))
        self.num_blocks = len(widths) - 1
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.neck = nn.Sequential(nn.Linear(widths[-1], widths[-1]), nn.ReLU()) if neck else None
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in range(1, self.num_blocks + 1):
            x = getattr(self, f"block{i}")(x)
        x = self.pool(x).flatten(1)
        if self.neck is not None:
            x = self.neck(x)
        return self.head(x)


def pretrained_digits_cnn() -> DigitsCNN:
    """DigitsCNN with the shipped weights trained on digits 0-4 (as a model builder would return it)."""
    from safetensors.torch import load_file

    model = DigitsCNN(num_classes=5)
    model.load_state_dict(load_file(PRETRAINED_0TO4))
    return model
