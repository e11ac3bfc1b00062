"""Per-group learning rates, step by step, as closed-form values (no chained torch schedulers).

    lr(group, step) = peak(group) * schedule(step) * warmup(step - start(group))

`schedule` runs over the whole run (cosine, linear, step, one-cycle or constant), so a group that
is unfrozen late joins the curve where the run is. An event with `restart_schedule: true` starts
the schedule again at its step, over the rest of the run (step - R of total - R), and every group
that trains from then on warms up again from R over the event's warmup_steps (else the scheduler's):
LP-FT's second phase, or any unfreeze-later recipe that wants the fine-tune to begin at the top of
its own curve. `start` is the step at which the group began
training (its unfreeze event, 0 for groups trainable from the beginning), so its warmup begins at
its own unfreeze. Before its start a group with warmup shows LR 0; without warmup it shows the LR
it will train at. The optimizer holds every group from step 0; `LRSchedule.apply` writes the
values into `optimizer.param_groups` before each step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from ..schema import SchedulerConfig


def _constant(step: int, total: int, spe: int, cfg: SchedulerConfig) -> float:
    return 1.0


def _cosine(step: int, total: int, spe: int, cfg: SchedulerConfig) -> float:
    m = cfg.min_lr_mult
    return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def _linear(step: int, total: int, spe: int, cfg: SchedulerConfig) -> float:
    m = cfg.min_lr_mult
    return 1.0 - (1.0 - m) * min(step, total) / total


def _step(step: int, total: int, spe: int, cfg: SchedulerConfig) -> float:
    return cfg.gamma ** (step // (cfg.step_epochs * spe))


def _onecycle(step: int, total: int, spe: int, cfg: SchedulerConfig) -> float:
    """torch.optim.lr_scheduler.OneCycleLR (two phases, cosine annealing), relative to the peak."""
    low = 1.0 / cfg.div_factor
    end = low / cfg.final_div_factor
    up_end = float(cfg.pct_start * total) - 1
    if 0 < up_end and step <= up_end:  # build_schedule makes sure the rise has a step
        a, b, pct = low, 1.0, step / up_end
    else:
        a, b, pct = 1.0, end, (step - up_end) / (total - 1 - up_end)
    return b + (a - b) / 2.0 * (math.cos(math.pi * min(pct, 1.0)) + 1)


SCHEDULES = {"constant": _constant, "cosine": _cosine, "linear": _linear, "step": _step, "onecycle": _onecycle}


def schedule_factor(step: int, total_steps: int, cfg: SchedulerConfig, steps_per_epoch: int = 1) -> float:
    """The run-wide factor at `step` (0-based) of `total_steps`."""
    return SCHEDULES[cfg.name.value](step, total_steps, steps_per_epoch, cfg)


def warmup_factor(since_start: int, warmup_steps: int) -> float:
    """Linear warmup: (k+1)/w at the k-th step of the group (k = step - start), 1 from k = w-1 on.

    Before the start (k < 0) it is 0, so a group that warms up begins from nothing.
    """
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, max(0.0, (since_start + 1) / warmup_steps))


def lr_at(step: int, *, peak: float, total_steps: int, start: int = 0, warmup_steps: int = 0,
          scheduler: SchedulerConfig | None = None, steps_per_epoch: int = 1) -> float:
    """The LR of one group at one step: peak x schedule(step) x warmup(step - start)."""
    cfg = scheduler or SchedulerConfig()
    return peak * schedule_factor(step, total_steps, cfg, steps_per_epoch) * warmup_factor(step - start, warmup_steps)


@dataclass(frozen=True)
class GroupTimeline:
    """One group: its peak LR and the steps at which it starts training, each with its warmup."""

    name: str
    peak: float
    starts: tuple[tuple[int, int], ...] = ()  # (step, warmup_steps), ascending
    warmup_steps: int = 0  # warmup used when the group never starts

    def start_at(self, step: int) -> tuple[int, int]:
        """The (start, warmup) in force at `step`: the latest start <= step, else the first one."""
        current = None
        for s in self.starts:
            if s[0] <= step:
                current = s
        if current is not None:
            return current
        return self.starts[0] if self.starts else (step + 1, self.warmup_steps)


@dataclass(frozen=True)
class LRSchedule:
    timelines: tuple[GroupTimeline, ...]
    total_steps: int
    steps_per_epoch: int
    scheduler: SchedulerConfig
    restarts: tuple[tuple[int, int], ...] = ()  # (step, warmup_steps) of restart_schedule events, ascending

    def lr(self, group: str, step: int) -> float:
        return self._lr(next(t for t in self.timelines if t.name == group), step)

    def lrs(self, step: int) -> dict[str, float]:
        return {t.name: self._lr(t, step) for t in self.timelines}

    def apply(self, optimizer: Any, step: int) -> None:
        """Write the LRs for `step` into every torch param group (matched by its `name`)."""
        write_lrs(optimizer, self.lrs(step))

    def _lr(self, t: GroupTimeline, step: int) -> float:
        start, warmup = t.start_at(step)
        origin, warm = next(((r, w) for r, w in reversed(self.restarts) if r <= step), (0, None))
        if warm is not None and start < origin:  # it trained before the restart: it warms up again from there
            start, warmup = origin, warm
        return t.peak * schedule_factor(step - origin, self.total_steps - origin, self.scheduler,
                                        self.steps_per_epoch) * warmup_factor(step - start, warmup)


def write_lrs(optimizer: Any, lrs: Mapping[str, float]) -> None:
    """Set each torch param group's LR from {group name: lr} (a GroupSpec may own two torch groups)."""
    for pg in optimizer.param_groups:
        pg["lr"] = lrs[pg["name"]]


def group_timelines(groups: Sequence[Any], trainable: Iterable[str], events: Sequence[Any], steps_per_epoch: int,
                    default_warmup: int) -> tuple[GroupTimeline, ...]:
    """Replay the freeze timeline: a group starts when it goes from nothing trainable to something.

    The warmup of a start is the starting event's `warmup_steps`, else the group's own, else the
    scheduler's. Groups and events are duck-typed (param_groups.GroupSpec, events.Event).
    """
    now = set(trainable)
    own = {g.name: g.warmup_steps if g.warmup_steps is not None else default_warmup for g in groups}
    starts: dict[str, list[tuple[int, int]]] = {g.name: [] for g in groups}
    for g in groups:
        if any(n in now for n in g.names):
            starts[g.name].append((0, own[g.name]))
    for ev in sorted(events, key=lambda e: e.trigger.at_step(steps_per_epoch)):
        at = ev.trigger.at_step(steps_per_epoch)
        before = {g.name: any(n in now for n in g.names) for g in groups}
        now.difference_update(ev.frozen)
        now.update(ev.names)
        for g in groups:
            if not before[g.name] and any(n in now for n in g.names):
                warmup = ev.warmup_steps if ev.warmup_steps is not None else own[g.name]
                starts[g.name] = [s for s in starts[g.name] if s[0] != at] + [(at, warmup)]
    return tuple(GroupTimeline(g.name, g.lr, tuple(starts[g.name]), own[g.name]) for g in groups)


def build_schedule(groups: Sequence[Any], trainable: Iterable[str], events: Sequence[Any], scheduler: SchedulerConfig,
                   epochs: int, steps_per_epoch: int) -> LRSchedule:
    """The LR of every group at every step of a run of `epochs` x `steps_per_epoch` steps."""
    total = epochs * steps_per_epoch
    for ev in events:
        if ev.trigger.by_step and not ev.trigger.step < total:
            raise UserError(f"{ev.where}.step={ev.trigger.step}: the run trains steps 0..{total - 1} ({epochs} epochs x "
                            f"{steps_per_epoch} steps), so this event would never happen. Lower the step or "
                            "raise trainer.epochs.")
    if scheduler.name.value == "onecycle" and scheduler.pct_start * total <= 1:
        raise UserError(f"optim.scheduler.pct_start={scheduler.pct_start}: one-cycle rises over pct_start x {total} "
                        f"steps = {scheduler.pct_start * total:g} steps; it needs more than 1. Raise pct_start or "
                        "trainer.epochs.")
    timelines = group_timelines(groups, trainable, events, steps_per_epoch, scheduler.warmup_steps)
    restarts = sorted({ev.trigger.at_step(steps_per_epoch): ev.warmup_steps if ev.warmup_steps is not None
                       else scheduler.warmup_steps for ev in events if getattr(ev, "restart", False)}.items())
    for at, _ in restarts:
        if scheduler.name.value == "onecycle" and scheduler.pct_start * (total - at) <= 1:
            raise UserError(f"freeze.schedule: restart_schedule at step {at} leaves {total - at} steps, and one-cycle "
                            f"rises over pct_start x that = {scheduler.pct_start * (total - at):g} steps; it needs more "
                            "than 1. Restart earlier, or raise trainer.epochs.")
    return LRSchedule(timelines, max(total, 1), steps_per_epoch, scheduler, tuple(restarts))


def initial_lrs(groups: Sequence[Any], trainable: Iterable[str], events: Sequence[Any],
                scheduler: SchedulerConfig) -> dict[str, float]:
    """The LRs of step 0, before the data (and so the steps per epoch) are known.

    Exact: at step 0 no schedule depends on the run length, and every event after epoch 0 or
    step 0 starts later whatever the number of steps per epoch.
    """
    far = 1 << 40  # steps per epoch: only step 0 is read, which no schedule ties to the run length
    return build_schedule(groups, trainable, events, scheduler, 1 << 20, far).lrs(0)
