"""Evaluation: a model's loss and its task's metrics over a loader, read from the device once."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .engine import Engine
from .task import TaskMetrics


def classification() -> TaskMetrics:
    """The default task of the Python API: classification with cross-entropy."""
    from ..schema import Task

    return TaskMetrics(Task.classification, nn.CrossEntropyLoss())


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
    if not n:
        return {"loss": math.nan, **task.metrics([], 0, "val")}
    out: dict[str, Any] = {"loss": sum(torch.stack(losses).tolist()) / n,
                           **task.metrics(torch.stack(stats).sum(0).tolist(), n, "val")}
    if detail:
        out["n"] = n
        if counts is not None:
            out.update(task.per_class(counts.cpu()))
    return out
