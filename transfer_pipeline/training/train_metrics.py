"""The training metrics kept on the device between reads, and the epoch's row made from them.

Reading a loss is a device sync, so the loop keeps each batch's loss, logits and targets where
they are and reads them together now and then (loop.py says when). The sums are added on the host
one batch at a time, so they are the same however the reads fall; a NaN or inf loss found at a
read stops training naming the batch it came from.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import UserError
from .batch_checks import nonfinite_loss_error, refetch_batch
from .engine import Engine
from .task import TaskMetrics

if TYPE_CHECKING:
    from .position import Position


class MetricsReader:
    """The steps' results not read yet, and the read that adds them to the position's sums."""

    def __init__(self, task: TaskMetrics, engine: Engine, train_loader: Any, model: nn.Module) -> None:
        self.task, self.engine, self.train_loader, self.model = task, engine, train_loader, model
        # (loss, logits, y, batch, step) of each batch trained since the last read
        self.pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]] = []

    def __len__(self) -> int:
        return len(self.pending)

    def keep(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, batch: int, step: int) -> None:
        self.pending.append((loss.detach(), logits.detach(), y, batch, step))

    def read(self, pos: Position, epoch: int, bar: Any, ask_stop: bool) -> bool:
        """Bring the pending results into `pos`; raise on a NaN/inf loss; whether to stop (all processes)."""
        if not self.pending:
            return ask_stop
        task, group = self.task, self.engine.group
        losses, logits, targets, batches, steps = zip(*self.pending)
        self.pending.clear()
        values = torch.stack(losses).tolist()
        rows = task.train_rows(logits, targets)  # metric sums (one read for all of them)
        sizes = [len(t) for t in targets]
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        if group is not None:
            summed = group.sum([math.fsum(v * m for v, m in zip(values, sizes)), sum(sizes), float(ask_stop),
                                float(bad is not None)] + [math.fsum(col) for col in zip(*rows)], self.engine.device)
            loss_sum, n, stops, bads, stat_sums = summed[0], summed[1], summed[2], summed[3], summed[4:]
            if bads and bad is None:
                raise UserError(f"training: the loss became NaN or inf on another process (of {group.world}) in epoch "
                                f"{epoch}, before global step {pos.global_step}; that process's log names the batch. "
                                "Lower optim.lr, set trainer.grad_clip, or check the data.")
        if bad is not None:
            batch, step = batches[bad], steps[bad]
            raise nonfinite_loss_error(values[bad], epoch, batch, step,
                                       refetch_batch(self.train_loader, batch, self.engine.target_key), self.model,
                                       found_at=pos.global_step - 1)
        if group is not None:
            pos.loss_sum += loss_sum
            pos.stats = [a + b for a, b in zip(pos.stats or [0.0] * len(stat_sums), stat_sums)]
            pos.n += int(n)
            ask_stop = stops > 0
        else:
            for v, m in zip(values, sizes):  # one batch at a time: the same sums however the reads fall
                pos.loss_sum += v * m
            for row in rows:
                pos.stats = [a + b for a, b in zip(pos.stats or [0.0] * len(row), row)]
            pos.n += sum(sizes)
        if bar is not None and pos.n:
            bar.show(loss=pos.loss_sum / pos.n, **task.metrics(pos.stats, pos.n, "train"),
                     samples_per_s=pos.n / max(pos.seconds, 1e-9))
        return ask_stop


def epoch_row(epoch: int, pos: Position, seconds: float, val: dict[str, float], task: TaskMetrics,
              model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The epoch's metrics row (metrics.csv's columns, in order): the read sums of `pos`, `val`, the LRs."""
    n = pos.n
    row: dict[str, Any] = {
        "epoch": epoch,
        "train_loss": pos.loss_sum / max(n, 1),
        **{f"train_{k}": v for k, v in task.metrics(pos.stats, n, "train").items()},
        **{f"val_{k}": v for k, v in val.items()},
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "samples_per_s": n / seconds if seconds > 0 else math.nan,
    }
    row.update({f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)})  # last step's LR
    return row
