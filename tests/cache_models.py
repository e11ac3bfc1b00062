"""DigitsCNN variants whose frozen part is not the same every time, in ways no module type shows
(importable as `cache_models` for `model._target_`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from transfer_pipeline.models import DigitsCNN


class _Features(DigitsCNN):
    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in range(1, self.num_blocks + 1):
            x = getattr(self, f"block{i}")(x)
        return self.pool(x).flatten(1)


class FunctionalDropout(_Features):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.dropout(self.features(x), 0.3, training=self.training))


class Noisy(_Features):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x) + 0.1 * torch.randn(1))


class TrainBranch(_Features):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.head(f * 0.5 if self.training else f)
