"""MobileNetV2 in the older layout of many re-implementations and early checkpoints: flat block sequences.

torchvision's `mobilenet_v2` nests each conv + BatchNorm + ReLU6 in a `Conv2dNormActivation`
(`features.N.conv.0.0`, `.0.1`, `.1.0`, `.1.1`, `.2`, `.3`); the older layout lists them flat in
one `nn.Sequential` (`features.N.conv.0` .. `.7`, ReLU6 at 2 and 5), and the first block, which
has no expansion conv, as `conv.0` .. `.4`. Same function, other names: the shipped example of
`mapping.suggest` (which writes the rules) and `mapping.verify` (which proves them).
"""

from __future__ import annotations

import torch
from torch import nn


class LegacyInvertedResidual(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        flat: list[nn.Module] = []
        for m in block.conv:  # Conv2dNormActivation (conv, bn, relu6) or a bare conv / bn
            flat.extend(m if isinstance(m, nn.Sequential) else [m])
        self.conv = nn.Sequential(*flat)
        self.use_res_connect = block.use_res_connect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class LegacyMobileNetV2(nn.Module):
    """torchvision's MobileNetV2 (same arguments, same init for a seed) with the flat older names."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, seed: int | None = 0) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v2

        if seed is not None:
            torch.manual_seed(seed)
        ref = mobilenet_v2(num_classes=num_classes, width_mult=width_mult)
        self.features = nn.Sequential(ref.features[0],
                                      *(LegacyInvertedResidual(b) for b in ref.features[1:-1]), ref.features[-1])
        self.classifier = ref.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))
