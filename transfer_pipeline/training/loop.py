"""The training loop: schedule events, train step, evaluation, metrics and checkpoints per epoch.

Evaluation is in evaluate.py, the checks of the data and the NaN diagnosis in batch_checks.py.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..tuning.batchnorm import apply_bn_policy
from ..tuning.events import Event
from ..tuning.freezing import apply_event
from ..tuning.lr_schedule import LRSchedule
from ..data.batches import ShuffledBatches, steps_in_epoch
from .batch_checks import nonfinite_loss_error, refetch_batch
from .engine import Engine
from .evaluate import classification, evaluate
from .task import TaskMetrics

log = logging.getLogger(__name__)

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


class StopTraining(BaseException):
    """`stop_requested()` said so after a step: the position was handed to `on_checkpoint` first."""


def batches_per_epoch(loader, limit_train_batches: int | None = None) -> int:
    """Batches trained per epoch: the loader's, capped by trainer.limit_train_batches."""
    n = len(loader)
    return n if limit_train_batches is None else min(n, limit_train_batches)


def steps_per_epoch(loader, limit_train_batches: int | None = None, accumulate: int = 1) -> int:
    """Optimizer steps per epoch (what schedules and step events count)."""
    return steps_in_epoch(batches_per_epoch(loader, limit_train_batches), accumulate)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, train_loader, val_loader, *, epochs: int,
          events: Sequence[Event], bn_policy: str | Mapping[str, str], engine: Engine, task: TaskMetrics | None = None,
          limit_train_batches: int | None = None, limit_val_batches: int | None = None,
          schedule: LRSchedule | None = None,
          on_event: Callable[[list[Event]], None] = lambda evs: None,
          on_epoch: Callable[[dict[str, Any]], Any] = lambda row: None,
          on_step: Callable[[int, torch.optim.Optimizer], None] | None = None,
          state: TrainState | None = None,
          on_checkpoint: Callable[[TrainState], None] | None = None, checkpoint_every_steps: int | None = None,
          stop_requested: Callable[[], bool] = lambda: False,
          progress: Callable[[int, int], Any] | None = None, sync_every: int = 50,
          forward_module: nn.Module | None = None) -> TrainState:
    """Train `epochs` epochs. Before each epoch and each optimizer step: fire the events due, set every group's LR.

    `engine` runs the steps (engine.py: device, precision, compile, DDP, `accumulate` batches per
    optimizer step); `task` gives the loss and the metrics (task.py; default: classification with
    cross-entropy). `schedule` (lr_schedule.build_schedule) gives each group's LR per optimizer
    step; without it the LRs in the optimizer are left as they are. `on_event` gets the events
    fired together (after they are applied and the LRs set); `on_step(step, optimizer)` runs after
    each optimizer step; `on_epoch(row)` after each epoch's evaluation, and a true return value
    stops training there. `forward_module` computes the logits from the loader's inputs when that
    is not the whole model (cached features feed the head alone).

    Losses and accuracy stay on the device and are read every `sync_every` steps, at a
    checkpoint, at a stop request and at the epoch's end (reading them is a device sync); a NaN or
    inf loss found at a read stops training naming the batch it came from. The first step of a
    call is checked at once, before its update, so bad weights are told apart from divergence.

    `state` continues a run (training.checkpoint): the loop starts at `state.position`, replays
    the events that had fired, skips the batches of the epoch already trained (the loader's
    generator is put back to the epoch's start, so the shuffled order is the same) and restores
    every RNG, so the rest is bit for bit the run that was never stopped. `on_checkpoint(state)` is
    called every `checkpoint_every_steps` steps and, when `stop_requested()` turns true after a
    step, before StopTraining is raised. Under torchrun the processes agree on a stop at the next
    read. `progress(epoch, steps)` returns a bar with `update(n)`, `show(**metrics)` and `close()`.
    """
    device, group, k = engine.device, engine.group, engine.accumulate
    task = task or classification()
    runner = forward_module if forward_module is not None else model
    params = list(model.parameters())
    state = state or TrainState()
    start = state.position
    sampler = getattr(train_loader, "batch_sampler", None)
    # the shuffling generator: the sampler's own (batches.py), else a DataLoader's (plain lists have none)
    generator = sampler.generator if isinstance(sampler, ShuffledBatches) else getattr(train_loader, "generator", None)
    if group is not None and not isinstance(sampler, ShuffledBatches):
        raise ValueError("under torchrun the train loader needs a ShuffledBatches batch sampler (training.data.loaders)")
    sized = isinstance(sampler, ShuffledBatches)  # batch sizes known ahead: a window's mean weighs each batch by size
    by_epoch: dict[int, list[Event]] = {}
    by_step: dict[int, list[Event]] = {}
    for ev in events:
        (by_step if ev.trigger.by_step else by_epoch).setdefault(ev.trigger.value, []).append(ev)

    def fire(due: list[Event], step: int) -> None:
        for ev in due:
            apply_event(model, ev)
        model.train()
        apply_bn_policy(model, bn_policy)
        engine.wrap(runner)  # DDP hooks for what was unfrozen
        if schedule is not None:
            schedule.apply(optimizer, step)
        on_event(due)

    # a continued run: what had fired by the position is applied again, silently
    for ev in events:
        if ev.trigger.fired_by(start.epoch, start.step_in_epoch, start.global_step):
            apply_event(model, ev)

    pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]] = []  # (loss, logits, y, batch, step)
    check_first = True  # the first step of this call is checked before its update
    weigh = k > 1 or group is not None  # batches weighed within a window (by size where sizes are known)
    window_samples = 1  # samples (sized) or batches in the current window, set at its first batch

    def forward_backward(x: Any, y: torch.Tensor, b: int, first_in_window: bool,
                         epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = engine.forward(runner, x)
        y = task.target(y, logits)
        loss = task.loss(logits, y)
        if check_first and not torch.isfinite(loss):
            raise nonfinite_loss_error(loss.item(), epoch, b, pos.global_step, (x, y), model)
        if first_in_window:  # after the forward: freeing the old gradients before it costs a CPU
            optimizer.zero_grad(set_to_none=True)  # run fresh page-faulted allocations (-15 % on resnet18)
        if weigh:  # this share's part of the window's mean (DDP averages over the processes, hence world)
            share = len(y) * (group.world if group is not None else 1) / window_samples if sized else 1 / window_samples
            engine.backward(loss * share)
        else:
            engine.backward(loss)
        return loss, logits, y

    def read(epoch: int, bar: Any, ask_stop: bool) -> bool:
        """Bring the pending results into the position; raise on a NaN/inf loss; whether to stop (all processes)."""
        if not pending:
            return ask_stop
        losses, logits, targets, batches, steps = zip(*pending)
        pending.clear()
        values = torch.stack(losses).tolist()
        rows = task.train_rows(logits, targets)  # metric sums (one read for all of them)
        sizes = [len(t) for t in targets]
        where = list(zip(batches, steps))
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        if group is not None:
            summed = group.sum([math.fsum(v * m for v, m in zip(values, sizes)), sum(sizes), float(ask_stop),
                                float(bad is not None)] + [math.fsum(col) for col in zip(*rows)], device)
            loss_sum, n, stops, bads, stat_sums = summed[0], summed[1], summed[2], summed[3], summed[4:]
            if bads and bad is None:
                raise UserError(f"training: the loss became NaN or inf on another process (of {group.world}) in epoch "
                                f"{epoch}, before global step {pos.global_step}; that process's log names the batch. "
                                "Lower optim.lr, set trainer.grad_clip, or check the data.")
        if bad is not None:
            batch, step = where[bad]
            raise nonfinite_loss_error(values[bad], epoch, batch, step, refetch_batch(train_loader, batch, engine.target_key), model,
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

    pos = state.position
    for epoch in range(start.epoch, epochs):
        continuing = epoch == start.epoch and (start.step_in_epoch > 0 or start.rng is not None)
        if not (continuing and start.step_in_epoch > 0) and epoch in by_epoch:
            fire(by_epoch[epoch], pos.global_step)
        model.train()
        apply_bn_policy(model, bn_policy)
        engine.wrap(runner)
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
        nb = batches_per_epoch(train_loader, limit_train_batches)
        bar = progress(epoch, steps_in_epoch(nb, k)) if progress is not None else None
        batches = iter(train_loader)
        for _ in range(skip):  # trained before the stop: same order, not trained again
            next(batches)
        if continuing and start.rng is not None:
            from .checkpoint import set_rng_state

            set_rng_state(start.rng)
        t0 = time.perf_counter() - pos.seconds
        for b, batch in enumerate(batches, start=skip):
            if b >= nb:
                break
            window_start = b - b % k
            if b == window_start:
                if weigh:  # the samples the optimizer step averages over, all processes together
                    window_samples = (sum(sampler.global_size(j) for j in range(b, min(b + k, nb))) if sized
                                      else min(k, nb - window_start))
                if pos.global_step in by_step:
                    fire(by_step[pos.global_step], pos.global_step)
                if schedule is not None:
                    schedule.apply(optimizer, pos.global_step)
            last = b + 1 - window_start == k or b + 1 == nb  # the window's last batch: the optimizer steps
            x, y = engine.batch(batch)
            if last:
                loss, logits, y = forward_backward(x, y, b, b == window_start, epoch)
            else:
                with engine.no_sync():  # DDP averages the window's gradients once, at its last batch
                    loss, logits, y = forward_backward(x, y, b, b == window_start, epoch)
            pending.append((loss.detach(), logits.detach(), y, b, pos.global_step))
            pos.step_in_epoch = b + 1
            if not last:
                continue
            engine.step(optimizer, params)
            if on_step is not None:
                on_step(pos.global_step, optimizer)
            pos.global_step += 1
            if bar is not None:
                bar.update(1)
            every = checkpoint_every_steps and pos.global_step % checkpoint_every_steps == 0
            stop = stop_requested() if group is None else False
            if check_first or every or stop or len(pending) >= sync_every or b + 1 == nb:
                pos.seconds = time.perf_counter() - t0
                stop = read(epoch, bar, stop if group is None else stop_requested())
                check_first = False
            if on_checkpoint is not None and (every or stop):
                on_checkpoint(state)
            if stop:
                if bar is not None:
                    bar.close()
                raise StopTraining
        read(epoch, bar, False)
        if bar is not None:
            bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        n = pos.n
        state.samples += n
        state.seconds += seconds
        val = evaluate(runner, val_loader, engine, task, limit_val_batches)
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": pos.loss_sum / max(n, 1),
            **{f"train_{k}": v for k, v in task.metrics(pos.stats, n, "train").items()},
            **{f"val_{k}": v for k, v in val.items()},
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
