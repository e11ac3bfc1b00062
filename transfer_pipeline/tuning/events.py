"""Schedule events: when one fires (`Trigger`) and what it does (`Event`).

An event fires before an epoch trains (`epoch: N`) or before an optimizer step (`step: N`,
0-based over the run). `Trigger` is the one place that knows what that means: the global step
it fires at, how it is shown ("epoch 3") and how its group is named (`unfreeze@3`,
`unfreeze@step40`). A new kind of trigger goes here; freezing, param_groups, lr_schedule and the
loop only ask a trigger these questions.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Trigger:
    epoch: int | None = None  # before this epoch trains
    step: int | None = None  # ... or before this optimizer step

    @property
    def by_step(self) -> bool:
        return self.step is not None

    @property
    def value(self) -> int:
        """The epoch or the step (what sorts events of one kind)."""
        return self.step if self.step is not None else self.epoch  # type: ignore[return-value]

    def at_step(self, steps_per_epoch: int) -> int:
        """The global optimizer step before which it fires."""
        return self.step if self.step is not None else self.epoch * steps_per_epoch  # type: ignore[operator]

    def epoch_of(self, steps_per_epoch: int) -> float:
        """Where it fires, in epochs (a step event part-way through one)."""
        return self.step / max(steps_per_epoch, 1) if self.by_step else float(self.epoch)  # type: ignore[operator]

    def fired_by(self, epoch: int, step_in_epoch: int, global_step: int) -> bool:
        """Whether a loop at this position has fired it (an epoch event fires before its epoch's first batch)."""
        if self.by_step:
            return self.step < global_step  # type: ignore[operator]
        return self.epoch < epoch or (self.epoch == epoch and step_in_epoch > 0)  # type: ignore[operator]

    @property
    def label(self) -> str:
        return f"step {self.step}" if self.by_step else f"epoch {self.epoch}"

    @property
    def tag(self) -> str:
        """What follows `unfreeze@` in the name of the group an event starts."""
        return f"step{self.step}" if self.by_step else str(self.epoch)


@dataclass(frozen=True, kw_only=True)
class Event:
    """A `freeze.schedule` entry or a `freeze.gradual` unfreeze, with its selectors resolved to names."""

    trigger: Trigger
    selectors: tuple[str, ...] = ()  # what it unfreezes, as written
    names: tuple[str, ...] = ()  # parameters it makes trainable (those not trainable just before)
    freeze_selectors: tuple[str, ...] = ()
    frozen: tuple[str, ...] = ()  # parameters it freezes again
    lr: float | None = None
    lr_mult: float | None = None
    warmup_steps: int | None = None
    name: str | None = None  # its group's name, when the user chose one
    where: str = "freeze.schedule"  # the config key, for messages
    restart: bool = False  # restart_schedule: the LR schedule starts again here (lr_schedule.py)

    @property
    def when(self) -> str:
        return self.trigger.label

    @property
    def sets_lr(self) -> bool:
        return self.lr is not None or self.lr_mult is not None

    @property
    def action(self) -> str:
        """What it does, short ('unfroze block2; froze stem'): a plot label."""
        return "; ".join(p.split(" (")[0] for p in self._parts())

    def _parts(self) -> list[str]:
        parts = []
        if self.selectors:
            parts.append(f"unfroze {', '.join(self.selectors)} ({len(self.names)} tensors)")
        if self.freeze_selectors:
            parts.append(f"froze {', '.join(self.freeze_selectors)} ({len(self.frozen)} tensors)")
        if self.restart:
            warm = f", every group warming up over {self.warmup_steps} steps" if self.warmup_steps else ""
            parts.append(f"restarted the LR schedule{warm}")
        return parts

    def describe(self) -> str:
        parts = self._parts()
        # the log numbers epochs from 1 ("epoch 4/6"); the config from 0 (epoch: 3 fires before the 4th)
        when = f"Step {self.trigger.step}" if self.trigger.by_step else f"Before epoch {self.trigger.epoch + 1} (epoch: {self.trigger.epoch})"
        return f"{when}: {'; '.join(parts)}"
