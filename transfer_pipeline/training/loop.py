"""The training loop: schedule events, train step, evaluation, metrics and checkpoints per epoch."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..tuning.batchnorm import apply_bn_policy
from ..errors import UserError
from ..tuning.events import Event
from ..tuning.freezing import apply_event
from ..tuning.lr_schedule import LRSchedule

log = logging.getLogger(__name__)

PRECISIONS = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name!r}: choose auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device={name}: CUDA is not available here (torch {torch.__version__}, "
                            f"built for CUDA {torch.version.cuda or 'none'}). Use device=cpu or device=auto.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device={name}: only {torch.cuda.device_count()} CUDA device(s) here.")
    elif device.type != "cpu":
        raise UserError(f"device={name!r}: choose auto, cpu, cuda or cuda:N.")
    return device


def autocast_context(precision: str, device: torch.device) -> Callable[[], Any]:
    dtype = PRECISIONS[precision]  # the schema checked the choice
    if dtype is None:
        return contextlib.nullcontext
    if dtype == torch.float16 and device.type != "cuda":
        raise UserError("trainer.precision=16 needs CUDA; on CPU use trainer.precision=bf16 or 32.")
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class TrainState:
    history: list[dict[str, Any]] = field(default_factory=list)
    samples: int = 0
    seconds: float = 0.0


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, autocast: Callable[[], Any],
             limit: int | None = None) -> tuple[float, float]:
    """Mean loss and accuracy over the loader (or its first `limit` batches)."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for i, (x, y) in enumerate(loader):
        if limit is not None and i >= limit:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    return (loss_sum / n, correct / n) if n else (math.nan, math.nan)


def check_output_size(model: nn.Module, loader, num_classes: int, device: torch.device) -> None:
    """One forward pass on two validation samples: a model that cannot take the data fails here, with the keys to set."""
    x, _ = next(iter(loader))
    x = x[:2].to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise UserError(f"model: the model cannot take the data's batches: input of shape {tuple(x.shape)} "
                        f"[batch, channels, height, width] gave {type(e).__name__}: {first}. Make the data fit the "
                        f"model: data.channels (now {x.shape[1]}; 3 for RGB models), data.image_size (now "
                        f"{x.shape[-1]}), or the model's input arguments (e.g. model.in_channels).") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        kind = f"a {type(out).__name__}" + (f" of {len(out)}" if isinstance(out, (tuple, list, dict)) else "")
        raise UserError(f"model: returns {kind}, but training needs a tensor of logits [batch, classes]. Wrap the "
                        "model so that forward() returns the logits (e.g. out[0] or out.logits).")
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise UserError(f"model: outputs shape {tuple(out.shape)} for a batch of 2, but the data has {num_classes} "
                        f"classes. Set the model's class count (e.g. model.num_classes={num_classes}).")


def nonfinite_loss_error(value: float, epoch: int, step: int, global_step: int, x: torch.Tensor,
                         model: nn.Module) -> UserError:
    """Say what made the loss NaN/inf: the input, weights that were bad from the start, or the training."""
    where = f"training: the loss became {value} at epoch {epoch}, step {step}"
    kept = " Files from finished epochs are kept."
    if not torch.isfinite(x).all():
        return UserError(f"{where}: the input batch itself holds NaN or inf. Check the dataset and data.mean / "
                         f"data.std.{kept}")
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if global_step == 0:
        what = (f"the weights hold NaN or inf before any update ({', '.join(bad[:5])})" if bad
                else "the model's first forward pass, before any update")
        return UserError(f"{where}: {what}, so the learning rate is not the cause. Check the source weights "
                         f"(mode=plan; NaN weights are refused unless source.allow_nonfinite=true) and the model.{kept}")
    return UserError(f"{where}: training diverged. Lower optim.lr (or the group LRs), set trainer.grad_clip, or use "
                     f"trainer.precision=32.{kept}")


def steps_per_epoch(loader, limit_train_batches: int | None = None) -> int:
    """Optimizer steps per epoch: the loader's batches, capped by trainer.limit_train_batches."""
    n = len(loader)
    return n if limit_train_batches is None else min(n, limit_train_batches)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, train_loader, val_loader, *, epochs: int,
          events: Sequence[Event], bn_policy: str | Mapping[str, str], device: torch.device, precision: str,
          grad_clip: float | None = None, limit_train_batches: int | None = None,
          limit_val_batches: int | None = None, schedule: LRSchedule | None = None,
          on_event: Callable[[list[Event]], None] = lambda evs: None,
          on_epoch: Callable[[dict[str, Any]], None] = lambda row: None,
          on_step: Callable[[int, torch.optim.Optimizer], None] = lambda step, opt: None) -> TrainState:
    """Train `epochs` epochs. Before each epoch and each step: fire the events due, set every group's LR.

    `schedule` (lr_schedule.build_schedule) gives each group's LR per step; without it the LRs in
    the optimizer are left as they are. `on_event` gets the events fired together (after they are
    applied and the LRs set); `on_step(step, optimizer)` runs after each optimizer step.
    """
    autocast = autocast_context(precision, device)
    scaler = torch.amp.GradScaler("cuda") if precision == "16" else None
    params = list(model.parameters())
    state = TrainState()
    by_epoch: dict[int, list[Event]] = {}
    by_step: dict[int, list[Event]] = {}
    for ev in events:
        (by_step if ev.trigger.by_step else by_epoch).setdefault(ev.trigger.value, []).append(ev)

    def fire(due: list[Event], step: int) -> None:
        for ev in due:
            apply_event(model, ev)
        model.train()
        apply_bn_policy(model, bn_policy)
        if schedule is not None:
            schedule.apply(optimizer, step)
        on_event(due)

    global_step = 0
    for epoch in range(epochs):
        if epoch in by_epoch:
            fire(by_epoch[epoch], global_step)
        model.train()
        apply_bn_policy(model, bn_policy)
        loss_sum, correct, n, t0 = 0.0, 0, 0, time.perf_counter()
        for step, (x, y) in enumerate(train_loader):
            if limit_train_batches is not None and step >= limit_train_batches:
                break
            if global_step in by_step:
                fire(by_step[global_step], global_step)
            if schedule is not None:
                schedule.apply(optimizer, global_step)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast():
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            if not torch.isfinite(loss):
                raise nonfinite_loss_error(loss.item(), epoch, step, global_step, x, model)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            on_step(global_step, optimizer)
            global_step += 1
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            n += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        state.samples += n
        state.seconds += seconds
        val_loss, val_acc = evaluate(model, val_loader, device, autocast, limit_val_batches)
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": loss_sum / max(n, 1),
            "train_acc": correct / max(n, 1),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "samples_per_s": n / seconds if seconds > 0 else math.nan,
        }
        row.update({f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups})  # the LR of the epoch's last step
        state.history.append(row)
        on_epoch(row)
    return state
