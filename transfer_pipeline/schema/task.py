"""`task`: classification, multilabel or regression, and the metrics each measures (monitor names)."""

from __future__ import annotations

from enum import Enum


class Task(Enum):
    classification = "classification"  # one class per sample: cross-entropy, accuracy (top-1, top-5, per class)
    multilabel = "multilabel"  # any number of labels per sample (0/1 targets): BCE with logits, F1
    regression = "regression"  # real-valued targets: MSE (or L1), MAE / RMSE


# what each task measures (training/task.py computes them); monitor names are <split>_<metric>
TASK_METRICS = {
    Task.classification: {"train": ("loss", "acc"), "val": ("loss", "acc", "top5_acc")},
    Task.multilabel: {"train": ("loss", "acc", "f1"), "val": ("loss", "acc", "f1")},
    Task.regression: {"train": ("loss", "mae", "rmse"), "val": ("loss", "mae", "rmse")},
}
DEFAULT_MONITOR = {Task.classification: "val_acc", Task.multilabel: "val_f1", Task.regression: "val_loss"}


def monitor_names(task: Task, ema: bool) -> list[str]:
    names = [f"{split}_{m}" for split, metrics in TASK_METRICS[task].items() for m in metrics]
    return names + ([f"ema_val_{m}" for m in TASK_METRICS[task]["val"]] if ema else [])
