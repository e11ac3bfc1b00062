"""Evaluation: a model's loss and its task's metrics over a loader, read from the device once."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from .engine import Engine
from .task import TaskMetrics


def classification() -> TaskMetrics:
    """The default task of the Python API: classification with cross-entropy."""
    from ..schema import Task

    return TaskMetrics(Task.classification, nn.CrossEntropyLoss())


def _check_whole(loader: Any, limit: int | None, n: int) -> None:
    """Every item of the split was scored, where it should be (no limit, the loader reads it in order):
    a dataset whose __getitem__ raises StopIteration ends the loop early without a word."""
    from torch.utils.data import SequentialSampler

    if limit is not None or not isinstance(getattr(loader, "sampler", None), SequentialSampler):
        return
    size = len(loader.dataset)
    if n < size:
        raise UserError(f"data: evaluation scored {n} of the split's {size} items: its iteration ended early. A "
                        "dataset's __getitem__ that raises StopIteration ends a DataLoader silently; raise IndexError "
                        "or another error there, or fix the item that stops it.")


@torch.no_grad()
def evaluate(model: nn.Module, loader, engine: Engine, task: TaskMetrics | None = None, limit: int | None = None,
             detail: bool = False) -> dict[str, Any]:
    """{loss, the task's metrics} over the loader (or its first `limit` batches), read from the device once.

    `detail`: also the per-class numbers (confusion matrix, per-label F1) for eval.json, and `n`.
    """
    task = task or classification()
    model.eval()
    losses, stats, counts, n = [], [], None, 0
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            break
        x, y = engine.batch(batch)
        logits = engine.logits(model, x).float()
        y = task.target(y, logits)
        losses.append(task.loss(logits, y) * len(y))
        stats.append(task.stats(logits, y))
        c = task.detail(logits, y) if detail else None
        if c is not None:
            counts = c if counts is None else counts + c
        n += len(y)
    _check_whole(loader, limit, n)
    if not n:
        return {"loss": math.nan, **task.metrics([], 0, "val")}
    out: dict[str, Any] = {"loss": sum(torch.stack(losses).tolist()) / n,
                           **task.metrics(torch.stack(stats).sum(0).tolist(), n, "val")}
    if detail:
        out["n"] = n
        if counts is not None:
            out.update(task.per_class(counts.cpu()))
    return out
