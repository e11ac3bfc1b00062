"""Where a training run is (`Position`) and what it has done (`TrainState`): what the loop moves on,
the metrics reader adds up, and checkpoints/last.pt keeps, so that a stopped run continues bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Position:
    """Where the loop is: with the model and optimizer, what continues a run bit for bit."""

    epoch: int = 0  # the epoch being trained (epochs before it are done)
    step_in_epoch: int = 0  # batches of `epoch` already trained
    global_step: int = 0
    loss_sum: float = 0.0  # `epoch`'s sums so far (its metrics row needs them)
    stats: list[float] = field(default_factory=list)  # the task's metric sums (task.TaskMetrics.stats), added up
    n: int = 0
    seconds: float = 0.0
    loader_rng: torch.Tensor | None = None  # the train loader's generator at the start of `epoch`
    rng: dict[str, Any] | None = None  # every RNG as it was at this position (training.checkpoint.rng_state)


@dataclass
class TrainState:
    history: list[dict[str, Any]] = field(default_factory=list)
    samples: int = 0  # over finished epochs (for samples/s)
    seconds: float = 0.0
    position: Position = field(default_factory=Position)
    stopped_early: bool = False
