"""Models for the mapping scenarios: same computation, different names or sizes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class FeaturesNet(nn.Module):
    """A 'legacy' layout: convolutions under `features.N`, classifier layers `layer1`, `layer2`."""

    def __init__(self, num_classes: int = 5, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.layer1 = nn.Linear(32, 32)
        self.layer2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(torch.relu(self.layer1(self.features(x).flatten(1))))


class BackboneNet(nn.Module):
    """The same network as FeaturesNet under new names: `backbone.N`, `fc1`, `fc2`."""

    def __init__(self, num_classes: int = 5, in_channels: int = 1) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.fc1 = nn.Linear(32, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.backbone(x).flatten(1))))


class TinyMLP(nn.Module):
    """Flatten -> Linear layers `fc0`, `fc1`, ... -> `fc<N>` classifier; sizes from `hidden`."""

    def __init__(self, in_features: int = 64, hidden: Sequence[int] = (32, 10), num_classes: int = 5) -> None:
        super().__init__()
        sizes = [in_features, *hidden, num_classes]
        self.layers = len(sizes) - 1
        for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
            self.add_module(f"fc{i}", nn.Linear(a, b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i in range(self.layers):
            x = getattr(self, f"fc{i}")(x)
            if i < self.layers - 1:
                x = torch.relu(x)
        return x
