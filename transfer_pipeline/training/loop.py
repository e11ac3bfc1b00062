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
class Position:
    """Where the loop is: with the model and optimizer, what continues a run bit for bit."""

    epoch: int = 0  # the epoch being trained (epochs before it are done)
    step_in_epoch: int = 0  # batches of `epoch` already trained
    global_step: int = 0
    loss_sum: float = 0.0  # `epoch`'s sums so far (its metrics row needs them)
    correct: int = 0
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


class StopTraining(BaseException):
    """`stop_requested()` said so after a step: the position was handed to `on_checkpoint` first."""


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
          on_epoch: Callable[[dict[str, Any]], Any] = lambda row: None,
          on_step: Callable[[int, torch.optim.Optimizer], None] = lambda step, opt: None,
          state: TrainState | None = None, scaler: Any = None,
          on_checkpoint: Callable[[TrainState], None] | None = None, checkpoint_every_steps: int | None = None,
          stop_requested: Callable[[], bool] = lambda: False,
          progress: Callable[[int, int], Any] | None = None) -> TrainState:
    """Train `epochs` epochs. Before each epoch and each step: fire the events due, set every group's LR.

    `schedule` (lr_schedule.build_schedule) gives each group's LR per step; without it the LRs in
    the optimizer are left as they are. `on_event` gets the events fired together (after they are
    applied and the LRs set); `on_step(step, optimizer)` runs after each optimizer step;
    `on_epoch(row)` after each epoch's evaluation, and a true return value stops training there.

    `state` continues a run (training.checkpoint): the loop starts at `state.position`, replays
    the events that had fired, skips the batches of the epoch already trained (the loader's
    generator is put back to the epoch's start, so the shuffled order is the same) and restores
    every RNG, so the rest is bit for bit the run that was never stopped. `on_checkpoint(state)` is
    called every `checkpoint_every_steps` steps and, when `stop_requested()` turns true after a
    step, before StopTraining is raised. `progress(epoch, steps)` returns a bar with
    `update(n, **postfix)` and `close()` (training.progress).
    """
    autocast = autocast_context(precision, device)
    if scaler is None and precision == "16":
        scaler = torch.amp.GradScaler("cuda")
    params = list(model.parameters())
    state = state or TrainState()
    start = state.position
    generator = getattr(train_loader, "generator", None)  # a DataLoader's shuffling (plain lists have none)
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

    # a continued run: what had fired by the position is applied again, silently
    for ev in events:
        if ev.trigger.fired_by(start.epoch, start.step_in_epoch, start.global_step):
            apply_event(model, ev)

    pos = state.position
    for epoch in range(start.epoch, epochs):
        continuing = epoch == start.epoch and (start.step_in_epoch > 0 or start.rng is not None)
        if not (continuing and start.step_in_epoch > 0) and epoch in by_epoch:
            fire(by_epoch[epoch], pos.global_step)
        model.train()
        apply_bn_policy(model, bn_policy)
        if generator is not None:
            if continuing and start.loader_rng is not None:
                generator.set_state(start.loader_rng)
            loader_rng = generator.get_state().clone()
        else:
            loader_rng = None
        skip = start.step_in_epoch if continuing else 0
        if not continuing:
            pos = state.position = Position(epoch, 0, pos.global_step, loader_rng=loader_rng)
        else:
            pos.loader_rng = loader_rng
        total = steps_per_epoch(train_loader, limit_train_batches)
        bar = progress(epoch, total) if progress is not None else None
        batches = iter(train_loader)
        for _ in range(skip):  # trained before the stop: same order, not trained again
            next(batches)
        if continuing and start.rng is not None:
            from .checkpoint import set_rng_state

            set_rng_state(start.rng)
        t0 = time.perf_counter() - pos.seconds
        for step, (x, y) in enumerate(batches, start=skip):
            if limit_train_batches is not None and step >= limit_train_batches:
                break
            if pos.global_step in by_step:
                fire(by_step[pos.global_step], pos.global_step)
            if schedule is not None:
                schedule.apply(optimizer, pos.global_step)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast():
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            if not torch.isfinite(loss):
                raise nonfinite_loss_error(loss.item(), epoch, step, pos.global_step, x, model)
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
            on_step(pos.global_step, optimizer)
            pos.global_step += 1
            pos.step_in_epoch = step + 1
            pos.loss_sum += loss.item() * len(y)
            pos.correct += (logits.argmax(1) == y).sum().item()
            pos.n += len(y)
            pos.seconds = time.perf_counter() - t0
            if bar is not None:
                bar.update(1, loss=pos.loss_sum / pos.n, acc=pos.correct / pos.n, samples_per_s=pos.n / max(pos.seconds, 1e-9))
            every = checkpoint_every_steps and pos.global_step % checkpoint_every_steps == 0
            stop = stop_requested()
            if on_checkpoint is not None and (every or stop):
                on_checkpoint(state)
            if stop:
                if bar is not None:
                    bar.close()
                raise StopTraining
        if bar is not None:
            bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        n = pos.n
        state.samples += n
        state.seconds += seconds
        val_loss, val_acc = evaluate(model, val_loader, device, autocast, limit_val_batches)
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": pos.loss_sum / max(n, 1),
            "train_acc": pos.correct / max(n, 1),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "samples_per_s": n / seconds if seconds > 0 else math.nan,
        }
        row.update({f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)})  # last step's LR
        state.history.append(row)
        # the next epoch's start: what a checkpoint written now continues from
        pos = state.position = Position(epoch + 1, 0, pos.global_step,
                                        loader_rng=generator.get_state().clone() if generator is not None else None)
        if on_epoch(row):
            state.stopped_early = True
            break
    return state
