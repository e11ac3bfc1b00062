"""The task (`task: classification | multilabel | regression`): its loss, its targets, its metrics.

One home for what differs between tasks. The loop and evaluation ask the task for the loss of a
batch and for a small vector of sums per batch (kept on the device, read every few steps); the
task turns summed vectors into metrics. Names are `<split>_<metric>` as listed in schema.TASK_METRICS.

- classification: targets are class indices (or soft labels [B, C] from mixup/cutmix); top-1
  and top-5 accuracy, per-class accuracy and the confusion matrix (evaluation).
- multilabel: targets are 0/1 per label [B, L]; a label is predicted at probability >= 0.5;
  label accuracy, micro F1, per-label F1 (evaluation).
- regression: real-valued targets [B] or [B, T], shaped like the output; MAE and RMSE.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..schema import TASK_METRICS, Task

DEFAULT_LOSS = {Task.classification: "torch.nn.CrossEntropyLoss", Task.multilabel: "torch.nn.BCEWithLogitsLoss",
                Task.regression: "torch.nn.MSELoss"}
# torch losses that fit one task only: a loss of another task "trains" silently wrong
LOSS_TASKS = {"CrossEntropyLoss": Task.classification, "NLLLoss": Task.classification,
              "BCEWithLogitsLoss": Task.multilabel, "MultiLabelSoftMarginLoss": Task.multilabel,
              "BCELoss": Task.multilabel, "MSELoss": Task.regression, "L1Loss": Task.regression,
              "SmoothL1Loss": Task.regression, "HuberLoss": Task.regression}


def build_loss(task: Task, node: Mapping[str, Any] | None) -> nn.Module:
    """The loss module: `loss` (a `_target_` node) or the task's default; checked to fit the task."""
    from ..build import instantiate

    node = dict(node) if node else {"_target_": DEFAULT_LOSS[task]}
    loss = instantiate(node, "loss")
    if not callable(loss):
        raise UserError(f"loss._target_: {node['_target_']} returned a {type(loss).__name__}, not a loss function.")
    fits = LOSS_TASKS.get(type(loss).__name__)
    if fits is not None and fits != task:
        raise UserError(f"loss: {type(loss).__name__} is a {fits.value} loss and task={task.value}; it would train "
                        f"the wrong thing. Use {DEFAULT_LOSS[task]} (drop `loss`) or set task={fits.value}.")
    if getattr(loss, "reduction", "mean") != "mean":
        raise UserError(f"loss.reduction={loss.reduction!r}: the loop averages over each batch itself from a mean "
                        "loss; set loss.reduction=mean.")
    return loss


class TaskMetrics:
    """Loss, target checks and metrics of one task. `size` is the class / label count (None: unknown yet)."""

    def __init__(self, task: Task, loss: nn.Module, size: int | None = None, class_names: list[str] | None = None):
        self.task, self.loss_fn, self.size, self.class_names = task, loss, size, class_names

    # --- per batch, on the device ---

    def target(self, y: Any, logits: torch.Tensor) -> torch.Tensor:
        """The target as the loss wants it (regression targets take the output's shape)."""
        y = torch.as_tensor(y, device=logits.device)
        if self.task == Task.regression:
            return y.float().reshape(logits.shape) if y.numel() == logits.numel() else y.float()
        if self.task == Task.multilabel:
            return y.float()
        return y

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(logits.float(), y)

    def stats(self, logits: torch.Tensor, y: torch.Tensor, train: bool = False) -> torch.Tensor:
        """Sums over the batch that the metrics are made of (float64, on the device); `train`: the training
        metrics only (no top-5 at every step)."""
        logits = logits.detach().float()
        if self.task == Task.classification:
            labels = y.argmax(1) if y.ndim == 2 else y  # soft labels (mixup): the dominant class
            if train or (self.size or 0) <= 5:
                return (logits.argmax(1) == labels).sum().double().reshape(1)
            top = logits.topk(5, dim=1).indices
            return torch.stack([(top[:, 0] == labels).sum(), (top == labels[:, None]).any(1).sum()]).double()
        if self.task == Task.multilabel:
            pred, truth = logits >= 0, y >= 0.5
            tp, fp, fn = (pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()
            return torch.stack([tp, fp, fn, (pred == truth).sum(), torch.tensor(truth.numel(), device=y.device)]).double()
        err = logits.reshape(y.shape) - y if logits.numel() == y.numel() else logits - y
        return torch.stack([err.abs().sum(), (err * err).sum(), torch.tensor(err.numel(), device=y.device)]).double()

    def train_rows(self, logits: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> list[list[float]]:
        """The training stats of several batches, read from the device at once: counts (classification,
        multilabel) as one row over all of them, error sums (regression) one row per batch, so that the
        epoch's sums are the same however the reads fall."""
        if self.task == Task.regression:
            return torch.stack([self.stats(a, b, train=True) for a, b in zip(logits, ys)]).tolist()
        y = torch.cat([b if b.ndim else b.reshape(1) for b in ys])
        return [self.stats(torch.cat(list(logits)), y, train=True).tolist()]

    def metrics(self, sums: list[float], n: int, split: str) -> dict[str, float]:
        """`sums` (the stats of every batch added up) -> {metric name: value}, names without the split prefix."""
        if not n or not sums:
            return {m: math.nan for m in TASK_METRICS[self.task][split] if m != "loss"
                    and not (m == "top5_acc" and (self.size or 0) <= 5)}
        if self.task == Task.classification:
            top5 = split != "train" and (self.size or 0) > 5  # with 5 classes or fewer it is always 1
            return {"acc": sums[0] / n, **({"top5_acc": sums[1] / n} if top5 else {})}
        if self.task == Task.multilabel:
            tp, fp, fn, right, total = sums
            return {"acc": right / total if total else math.nan, "f1": f1(tp, fp, fn)}
        abs_sum, sq_sum, count = sums
        return {"mae": abs_sum / count if count else math.nan, "rmse": math.sqrt(sq_sum / count) if count else math.nan}

    # --- evaluation details ---

    def detail(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Per-class counts for eval.json: the confusion matrix (classification) or per-label tp/fp/fn."""
        if self.task == Task.classification and self.size:
            labels = y.argmax(1) if y.ndim == 2 else y
            idx = labels * self.size + logits.argmax(1)
            return torch.bincount(idx, minlength=self.size ** 2).reshape(self.size, self.size)
        if self.task == Task.multilabel:
            pred, truth = logits >= 0, y >= 0.5
            return torch.stack([(pred & truth).sum(0), (pred & ~truth).sum(0), (~pred & truth).sum(0)])
        return None

    def per_class(self, counts: torch.Tensor) -> dict[str, Any]:
        names = self.class_names or [str(i) for i in range(counts.shape[-1])]
        if self.task == Task.classification:
            c = counts.tolist()
            acc = {names[i]: (row[i] / sum(row) if sum(row) else None) for i, row in enumerate(c)}
            return {"per_class_acc": acc, "confusion": {"classes": names, "matrix": c,
                                                        "rows": "true class", "columns": "predicted class"}}
        tp, fp, fn = counts.tolist()
        return {"per_label_f1": {names[i]: f1(tp[i], fp[i], fn[i]) for i in range(len(tp))}}


def f1(tp: float, fp: float, fn: float) -> float:
    return 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else math.nan


def check_fit(metrics: TaskMetrics, logits: torch.Tensor, y: torch.Tensor) -> None:
    """The model's output on a real batch fits the targets: a mismatch fails before training, naming the fix.

    Sets `metrics.size` (classes or labels) from the output where the data did not name its classes.
    """
    task, shape, n = metrics.task, tuple(logits.shape), len(logits)
    if task == Task.classification:
        if y.is_floating_point() and y.ndim == 1:
            raise UserError("task=classification: the targets are real numbers (float), not class indices. For "
                            "real-valued targets set task=regression; for 0/1 labels per class, task=multilabel.")
        if logits.ndim != 2:
            raise UserError(f"model: outputs shape {shape} for a batch of {n}; classification needs "
                            "[batch, classes]. Check model.output or the model's head.")
        if metrics.size is None:
            metrics.size = shape[1]
        if shape[1] != metrics.size:
            raise UserError(f"model: outputs {shape[1]} classes (shape {shape}), but the data has {metrics.size} "
                            f"classes. Set the model's class count (e.g. model.num_classes={metrics.size}).")
        if y.ndim == 1 and len(y) and (int(y.max()) >= metrics.size or int(y.min()) < 0):
            raise UserError(f"data: a target is class {int(y.max()) if int(y.max()) >= metrics.size else int(y.min())}, "
                            f"outside 0..{metrics.size - 1} ({metrics.size} classes). Check the labels or the class "
                            "count (model.num_classes, data classes).")
    elif task == Task.multilabel:
        if tuple(y.shape) != shape:
            raise UserError(f"task=multilabel: the targets have shape {tuple(y.shape)} and the model outputs {shape}; "
                            "multilabel targets are 0/1 per label, [batch, labels], one output per label (e.g. "
                            "model.num_classes=<labels>).")
        if len(y) and (float(y.min()) < 0 or float(y.max()) > 1):
            raise UserError("task=multilabel: targets must be 0 or 1 (or probabilities in [0, 1]) per label; for "
                            "class indices use task=classification.")
        metrics.size = metrics.size or shape[1]
    elif y.numel() != logits.numel():
        raise UserError(f"task=regression: the model outputs {shape} for targets of shape {tuple(y.shape)}; give the "
                        "model one output per target value (e.g. model.num_classes=1 for one value per sample).")


def task_metrics(task: Task, loss: Mapping[str, Any] | None, class_names: list[str] | None) -> TaskMetrics:
    """The run's TaskMetrics: the loss (`loss` node or the task's), the class count where the data names it."""
    size = len(class_names) if class_names is not None and task != Task.regression else None
    return TaskMetrics(task, build_loss(task, loss), size, class_names)
