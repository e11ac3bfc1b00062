"""Keeping the best model, stopping early, and the EMA of the weights.

- `Best`: the monitored metric (`trainer.monitor`, max for accuracies, min for losses) and the
  epoch where it was best; the pipeline writes checkpoints/best.safetensors at each new best.
- `EarlyStop`: `trainer.early_stopping.patience` epochs without an improvement of more than
  `min_delta` stop the run, but never before the last scheduled unfreeze has had `patience`
  epochs of its own (the log says when it waits for one).
- `EMA`: `trainer.ema.decay`: torch's AveragedModel with an exponential average of the
  parameters and buffers, updated after every optimizer step, evaluated each epoch.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


def monitor_mode(metric: str, mode: str | None) -> str:
    return mode or ("min" if "loss" in metric else "max")


@dataclass
class Best:
    metric: str
    mode: str  # max | min
    value: float | None = None
    epoch: int | None = None

    def improved(self, value: float, min_delta: float = 0.0) -> bool:
        if not math.isfinite(value):
            return False
        if self.value is None:
            return True
        return value > self.value + min_delta if self.mode == "max" else value < self.value - min_delta

    def update(self, row: dict[str, Any]) -> bool:
        """True when `row` is the new best (then it is recorded)."""
        value = float(row[self.metric])
        if self.improved(value):
            self.value, self.epoch = value, int(row["epoch"])
            return True
        return False

    def state(self) -> dict[str, Any]:
        return {"value": self.value, "epoch": self.epoch}


@dataclass
class EarlyStop:
    patience: int
    min_delta: float
    wait_until: int  # the epoch (0-based) before which it never stops: last unfreeze + patience - 1
    best: float | None = None
    stale: int = 0  # epochs since the last improvement

    def should_stop(self, tracker: Best, row: dict[str, Any]) -> bool:
        value = float(row[tracker.metric])
        probe = Best(tracker.metric, tracker.mode, self.best)
        if probe.improved(value, self.min_delta):
            self.best, self.stale = value, 0
            return False
        self.stale += 1
        if self.stale < self.patience:
            return False
        epoch = int(row["epoch"])
        if epoch < self.wait_until:
            log.info("early stopping: %s has not improved for %d epoch(s), but the last scheduled unfreeze gets %d "
                     "epoch(s) to act first (until epoch %d)", tracker.metric, self.stale, self.patience,
                     self.wait_until + 1)
            return False
        log.info("early stopping after epoch %d: %s has not improved by more than %g for %d epoch(s)", epoch + 1,
                 tracker.metric, self.min_delta, self.stale)
        return True

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "stale": self.stale}


def make_ema(model: Any, decay: float) -> Any:
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
