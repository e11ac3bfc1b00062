"""Where the metrics go: metrics.csv always, TensorBoard when `logger` lists it.

A logger is a small class with `start(load_plan_text)`, `epoch(row)` and `close()`; to add one
(MLflow, W&B ...) write it here and add its name to `LOGGERS` and to the schema's LOGGERS.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..files import write_csv


class CSVLogger:
    """metrics.csv: one row per epoch, rewritten whole (atomically) after every epoch."""

    def __init__(self, run_dir: Path, history: list[dict[str, Any]]) -> None:
        self.path, self.history = run_dir / "metrics.csv", history

    def start(self, plan_text: str) -> None:
        pass

    def epoch(self, row: dict[str, Any]) -> None:
        write_csv(self.path, self.history)

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Event files in <run dir>/tensorboard: every metric and group LR per epoch, the trainable
    parameter count, and the load plan as text (`tensorboard --logdir outputs`)."""

    def __init__(self, run_dir: Path, history: list[dict[str, Any]]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("logger: tensorboard needs the tensorboard package: pip install tensorboard "
                            "(or pip install -e \".[tensorboard]\"), or drop it from logger.") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def start(self, plan_text: str) -> None:
        self.writer.add_text("load_plan", "```\n" + plan_text + "\n```", 0)

    def epoch(self, row: dict[str, Any]) -> None:
        step = int(row["epoch"]) + 1
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


LOGGERS = {"csv": CSVLogger, "tensorboard": TensorBoardLogger}


def make_loggers(names: list[str], run_dir: Path, history: list[dict[str, Any]]) -> list[Any]:
    """csv first and always, then the others `logger` lists."""
    ordered = ["csv"] + [n for n in dict.fromkeys(names) if n != "csv"]
    return [LOGGERS[n](run_dir, history) for n in ordered]
