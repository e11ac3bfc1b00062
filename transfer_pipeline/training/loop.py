"""The training loop: schedule events, train steps, evaluation and the metrics row, epoch by epoch.

`train(ctx, state)` takes what it trains and with what as one TrainContext and moves a TrainState
on; EpochRunner runs one epoch of steps at a time. What the loop writes it leaves to its caller's
callbacks (fit.py writes the checkpoints, the weights and the logs). The reads of the kept
training metrics are in train_metrics.py, evaluation in evaluate.py, the checks of the data and
the NaN diagnosis in batch_checks.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..tuning.batchnorm import apply_bn_policy
from ..tuning.events import Event
from ..tuning.freezing import apply_event
from ..tuning.lr_schedule import LRSchedule
from ..data.batches import ShuffledBatches, steps_in_epoch
from .batch_checks import nonfinite_loss_error
from .engine import Engine
from .evaluate import classification, evaluate
from .task import TaskMetrics
from .position import Position, TrainState
from .train_metrics import MetricsReader, epoch_row

log = logging.getLogger(__name__)


class StopTraining(BaseException):
    """`stop_requested()` said so after a step: the position was handed to `on_checkpoint` first."""


def _no_events(due: list[Event]) -> None:
    pass


def _go_on(row: dict[str, Any]) -> bool:
    return False


def _no_stop() -> bool:
    return False


@dataclass
class TrainContext:
    """What `train` trains and with what: model, optimizer, loaders, the freeze plan's events, engine, task,
    schedule, and the callbacks through which the caller keeps the run's work.

    `engine` runs the steps (engine.py: device, precision, compile, DDP, `accumulate` batches per
    optimizer step); `task` gives the loss and the metrics (task.py; default: classification with
    cross-entropy). `schedule` (lr_schedule.build_schedule) gives each group's LR per optimizer
    step; without it the LRs in the optimizer are left as they are. `on_event` gets the events
    fired together (after they are applied and the LRs set); `on_step(step, optimizer)` runs after
    each optimizer step; `on_epoch(row)` after each epoch's evaluation, and a true return value
    stops training there. `forward_module` computes the logits from the loader's inputs when that
    is not the whole model (cached features feed the head alone). `on_checkpoint(state)` is called
    every `checkpoint_every_steps` steps and, when `stop_requested()` turns true after a step,
    before StopTraining is raised. `progress(epoch, steps)` returns a bar with `update(n)`,
    `show(**metrics)` and `close()`. The kept metrics are read every `sync_every` steps.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_loader: Any
    val_loader: Any
    engine: Engine
    epochs: int
    events: Sequence[Event]
    bn_policy: str | Mapping[str, str]
    task: TaskMetrics | None = None
    schedule: LRSchedule | None = None
    limit_train_batches: int | None = None
    limit_val_batches: int | None = None
    forward_module: nn.Module | None = None
    on_event: Callable[[list[Event]], None] = _no_events
    on_epoch: Callable[[dict[str, Any]], Any] = _go_on
    on_step: Callable[[int, torch.optim.Optimizer], None] | None = None
    on_checkpoint: Callable[[TrainState], None] | None = None
    checkpoint_every_steps: int | None = None
    stop_requested: Callable[[], bool] = _no_stop
    progress: Callable[[int, int], Any] | None = None
    sync_every: int = 50


def batches_per_epoch(loader, limit_train_batches: int | None = None) -> int:
    """Batches trained per epoch: the loader's, capped by trainer.limit_train_batches."""
    n = len(loader)
    return n if limit_train_batches is None else min(n, limit_train_batches)


def bad_targets(task: TaskMetrics, logits: torch.Tensor, y: Any, epoch: int, b: int) -> UserError | None:
    """Why a batch's targets do not fit the loss (a class out of range, another shape or type), as the first
    batch's checks would say it, with where; None when the targets look right (then the error is the loss's)."""
    from .task import check_fit

    try:
        check_fit(task, logits.detach().float(), task.target(y, logits))
    except UserError as e:
        return UserError(f"epoch {epoch + 1}, batch {b} of the train split: {e}")
    except Exception:  # noqa: BLE001 - the targets cannot even be read as the task's: that is the message
        return UserError(f"epoch {epoch + 1}, batch {b} of the train split: its targets ({type(y).__name__}"
                         f"{' ' + str(getattr(y, 'dtype', '')) if hasattr(y, 'dtype') else ''}) are not what "
                         f"task={task.task.value} takes.")
    return None


def made_batches(batches: Iterator, split: str, first: int = 0) -> Iterator:
    """The loader's batches; one that cannot be made (items that do not stack, a worker that died) is told
    as the data's, with its index (an item's own error is already told by data.datasets.YourSplit)."""
    b = first
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - collate and worker errors come in many types
            first_line = (str(e).strip().splitlines() or [""])[0][:300]
            raise UserError(f"data: batch {b} of the {split} split could not be made ({type(e).__name__}: "
                            f"{first_line}). Items must stack into a batch: tensors of one shape per key, numbers "
                            "as targets.") from None
        yield batch
        b += 1


def ended_early(split: str, got: int, expected: int, loader: Any, epoch: int) -> UserError:
    """A loader that stopped before its length: a dataset whose __getitem__ raised StopIteration ends the
    DataLoader's iteration without a word, and the run would train (or score) on part of the split."""
    size = len(loader.dataset) if hasattr(loader.dataset, "__len__") else "?"
    return UserError(f"data: the {split} split gave {got} of its {expected} batches in epoch {epoch + 1} "
                     f"({size} items): its iteration ended early. A dataset's __getitem__ that raises StopIteration "
                     "(e.g. next() on an exhausted iterator) ends a DataLoader silently; raise IndexError or "
                     "another error there, or fix the item that stops it.")


def steps_per_epoch(loader, limit_train_batches: int | None = None, accumulate: int = 1) -> int:
    """Optimizer steps per epoch (what schedules and step events count)."""
    return steps_in_epoch(batches_per_epoch(loader, limit_train_batches), accumulate)


def train(ctx: TrainContext, state: TrainState | None = None) -> TrainState:
    """Train `ctx.epochs` epochs. Before each epoch and each optimizer step: fire the events due, set every group's LR.

    Losses and accuracy stay on the device and are read every `ctx.sync_every` steps, at a
    checkpoint, at a stop request and at the epoch's end (reading them is a device sync); a NaN or
    inf loss found at a read stops training naming the batch it came from. The first step of a
    call is checked at once, before its update, so bad weights are told apart from divergence.

    `state` continues a run (training.checkpoint): the loop starts at `state.position`, replays
    the events that had fired, skips the batches of the epoch already trained (the loader's
    generator is put back to the epoch's start, so the shuffled order is the same) and restores
    every RNG, so the rest is bit for bit the run that was never stopped. Under torchrun the
    processes agree on a stop at the next read.
    """
    state = state if state is not None else TrainState()
    runner = EpochRunner(ctx, state)
    runner.replay_fired()
    for epoch in range(runner.start.epoch, ctx.epochs):
        row = runner.run_epoch(epoch)
        if ctx.on_epoch(row):
            state.stopped_early = True
            break
    return state


class EpochRunner:
    """One epoch of steps at a time: schedule events, LRs, accumulation windows, step checkpoints, stop requests."""

    def __init__(self, ctx: TrainContext, state: TrainState) -> None:
        self.ctx, self.state = ctx, state
        self.group = ctx.engine.group
        self.task = ctx.task or classification()
        self.runner = ctx.forward_module if ctx.forward_module is not None else ctx.model
        self.params = list(ctx.model.parameters())
        self.start = state.position  # where this call starts (a continued run's position)
        sampler = getattr(ctx.train_loader, "batch_sampler", None)
        # the shuffling generator: the sampler's own (batches.py), else a DataLoader's (plain lists have none)
        self.generator = (sampler.generator if isinstance(sampler, ShuffledBatches)
                          else getattr(ctx.train_loader, "generator", None))
        if self.group is not None and not isinstance(sampler, ShuffledBatches):
            raise ValueError("under torchrun the train loader needs a ShuffledBatches batch sampler "
                             "(data.datasets.loaders)")
        self.sampler = sampler
        # batch sizes known ahead: a window's mean weighs each batch by size
        self.sized = isinstance(sampler, ShuffledBatches)
        self.by_epoch: dict[int, list[Event]] = {}
        self.by_step: dict[int, list[Event]] = {}
        for ev in ctx.events:
            (self.by_step if ev.trigger.by_step else self.by_epoch).setdefault(ev.trigger.value, []).append(ev)
        self.metrics = MetricsReader(self.task, ctx.engine, ctx.train_loader, ctx.model)
        self.check_first = True  # the first step of this call is checked before its update
        self.weigh = ctx.engine.accumulate > 1 or self.group is not None  # batches weighed within a window
        self.window_samples = 1  # samples (sized) or batches in the current window, set at its first batch

    def replay_fired(self) -> None:
        """A continued run: what had fired by the position is applied again, silently."""
        start = self.start
        for ev in self.ctx.events:
            if ev.trigger.fired_by(start.epoch, start.step_in_epoch, start.global_step):
                apply_event(self.ctx.model, ev)

    def fire(self, due: list[Event], step: int) -> None:
        ctx = self.ctx
        for ev in due:
            apply_event(ctx.model, ev)
        ctx.model.train()
        apply_bn_policy(ctx.model, ctx.bn_policy)
        ctx.engine.wrap(self.runner)  # DDP hooks for what was unfrozen
        if ctx.schedule is not None:
            ctx.schedule.apply(ctx.optimizer, step)
        ctx.on_event(due)

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """Train `epoch` (the rest of it, for a continued run), evaluate, and return its metrics row."""
        batches, skip, nb, bar = self._begin(epoch)
        t0 = time.perf_counter() - self.state.position.seconds
        for b, batch in enumerate(made_batches(batches, "train", skip), start=skip):
            if b >= nb:
                break
            self._batch(epoch, b, batch, nb, bar, t0)
        if self.state.position.step_in_epoch < nb:
            raise ended_early("train", self.state.position.step_in_epoch, nb, self.ctx.train_loader, epoch)
        return self._end(epoch, bar, t0)

    def _begin(self, epoch: int) -> tuple[Iterator, int, int, Any]:
        """The epoch's events, modes, position and batches: (batches, batches skipped, batches in all, bar)."""
        ctx, start, state = self.ctx, self.start, self.state
        pos = state.position
        continuing = epoch == start.epoch and (start.step_in_epoch > 0 or start.rng is not None)
        if not (continuing and start.step_in_epoch > 0) and epoch in self.by_epoch:
            self.fire(self.by_epoch[epoch], pos.global_step)
        ctx.model.train()
        apply_bn_policy(ctx.model, ctx.bn_policy)
        ctx.engine.wrap(self.runner)
        if self.generator is not None:
            if continuing and start.loader_rng is not None:
                self.generator.set_state(start.loader_rng)
            loader_rng = self.generator.get_state().clone()
        else:
            loader_rng = None
        skip = start.step_in_epoch if continuing else 0
        if not continuing:
            state.position = Position(epoch, 0, pos.global_step, loader_rng=loader_rng)
        else:
            pos.loader_rng = loader_rng
        nb = batches_per_epoch(ctx.train_loader, ctx.limit_train_batches)
        bar = ctx.progress(epoch, steps_in_epoch(nb, ctx.engine.accumulate)) if ctx.progress is not None else None
        batches = iter(ctx.train_loader)
        for _ in range(skip):  # trained before the stop: same order, not trained again
            next(batches)
        if continuing and start.rng is not None:
            from .checkpoint import set_rng_state

            set_rng_state(start.rng)
        return batches, skip, nb, bar

    def _batch(self, epoch: int, b: int, batch: Any, nb: int, bar: Any, t0: float) -> None:
        """Forward and backward of batch `b`; at its window's first batch the events and LRs, at its last the step."""
        ctx, engine, pos = self.ctx, self.ctx.engine, self.state.position
        k = engine.accumulate
        window_start = b - b % k
        if b == window_start:
            if self.weigh:  # the samples the optimizer step averages over, all processes together
                self.window_samples = (sum(self.sampler.global_size(j) for j in range(b, min(b + k, nb))) if self.sized
                                       else min(k, nb - window_start))
            if pos.global_step in self.by_step:
                self.fire(self.by_step[pos.global_step], pos.global_step)
            if ctx.schedule is not None:
                ctx.schedule.apply(ctx.optimizer, pos.global_step)
        last = b + 1 - window_start == k or b + 1 == nb  # the window's last batch: the optimizer steps
        x, y = engine.batch(batch)
        if last:
            loss, logits, y = self._forward_backward(x, y, b, b == window_start, epoch)
        else:
            with engine.no_sync():  # DDP averages the window's gradients once, at its last batch
                loss, logits, y = self._forward_backward(x, y, b, b == window_start, epoch)
        self.metrics.keep(loss, logits, y, b, pos.global_step)
        pos.step_in_epoch = b + 1
        if last:
            self._step(epoch, b, nb, bar, t0)

    def _forward_backward(self, x: Any, y: torch.Tensor, b: int, first_in_window: bool,
                          epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ctx, engine, task = self.ctx, self.ctx.engine, self.task
        logits = engine.forward(self.runner, x)
        try:
            y = task.target(y, logits)
            loss = task.loss(logits, y)
        except (RuntimeError, IndexError, ValueError, TypeError) as e:  # told as the batch's targets where they are
            raise bad_targets(task, logits, y, epoch, b) or e
        if self.check_first and not torch.isfinite(loss):
            raise nonfinite_loss_error(loss.item(), epoch, b, self.state.position.global_step, (x, y), ctx.model)
        if first_in_window:  # after the forward: freeing the old gradients before it costs a CPU
            ctx.optimizer.zero_grad(set_to_none=True)  # run fresh page-faulted allocations (-15 % on resnet18)
        if self.weigh:  # this share's part of the window's mean (DDP averages over the processes, hence world)
            group = self.group
            share = (len(y) * (group.world if group is not None else 1) / self.window_samples if self.sized
                     else 1 / self.window_samples)
            engine.backward(loss * share)
        else:
            engine.backward(loss)
        return loss, logits, y

    def _step(self, epoch: int, b: int, nb: int, bar: Any, t0: float) -> None:
        """The optimizer step, then the reads, step checkpoints and stop requests due after it."""
        ctx, pos = self.ctx, self.state.position
        ctx.engine.step(ctx.optimizer, self.params)
        if ctx.on_step is not None:
            ctx.on_step(pos.global_step, ctx.optimizer)
        pos.global_step += 1
        if bar is not None:
            bar.update(1)
        every = ctx.checkpoint_every_steps and pos.global_step % ctx.checkpoint_every_steps == 0
        stop = ctx.stop_requested() if self.group is None else False
        if self.check_first or every or stop or len(self.metrics) >= ctx.sync_every or b + 1 == nb:
            pos.seconds = time.perf_counter() - t0
            stop = self.metrics.read(pos, epoch, bar, stop if self.group is None else ctx.stop_requested())
            self.check_first = False
        if ctx.on_checkpoint is not None and (every or stop):
            ctx.on_checkpoint(self.state)
        if stop:
            if bar is not None:
                bar.close()
            raise StopTraining

    def _end(self, epoch: int, bar: Any, t0: float) -> dict[str, Any]:
        """The last read, the evaluation, the epoch's row; the position moves to the next epoch's start."""
        ctx, state, pos = self.ctx, self.state, self.state.position
        device = ctx.engine.device
        self.metrics.read(pos, epoch, bar, False)
        if bar is not None:
            bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        state.samples += pos.n
        state.seconds += seconds
        val = evaluate(self.runner, ctx.val_loader, ctx.engine, self.task, ctx.limit_val_batches)
        row = epoch_row(epoch, pos, seconds, val, self.task, ctx.model, ctx.optimizer)
        state.history.append(row)
        # the next epoch's start: what a checkpoint written now continues from
        state.position = Position(epoch + 1, 0, pos.global_step,
                                  loader_rng=self.generator.get_state().clone() if self.generator is not None else None)
        return row
