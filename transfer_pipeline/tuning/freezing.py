"""Selectors -> requires_grad, and the freeze/unfreeze schedule.

Frozen means `requires_grad=False` and `grad=None`: no gradient, so the optimizer (which holds
every parameter from the start) neither updates nor decays it and keeps no state for it.
Which BatchNorm layers keep their statistics fixed is batchnorm.py's job; its `frozen` mode
also keeps the layer's parameters out of every unfreeze here.

Blocks (`freeze.blocks`, by default the top-level modules in module order) are what
`freeze.gradual` unfreezes one at a time and what `optim.layer_decay` gives decaying LRs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .batchnorm import frozen_bn_params, resolve_bn_modes
from ..errors import UserError
from ..schema import FreezeConfig
from ..names import group_by_component
from ..selectors import select_all

log = logging.getLogger(__name__)

GRADUAL_KEYS = ("every", "from", "start", "lr", "lr_mult", "warmup_steps")


@dataclass(frozen=True)
class ResolvedEvent:
    epoch: int | None  # applied before this epoch trains (None: step-based)
    selectors: tuple[str, ...]  # what it unfreezes, as written
    names: tuple[str, ...]  # parameters it makes trainable (those not trainable just before)
    lr: float | None = None
    step: int | None = None  # applied before this optimizer step (0-based over the run)
    frozen: tuple[str, ...] = ()  # parameters it freezes again
    freeze_selectors: tuple[str, ...] = ()
    lr_mult: float | None = None
    warmup_steps: int | None = None
    name: str | None = None  # its group's name, when the user chose one
    where: str = "freeze.schedule"  # the config key, for messages

    @property
    def when(self) -> str:
        return f"epoch {self.epoch}" if self.step is None else f"step {self.step}"

    @property
    def sets_lr(self) -> bool:
        return self.lr is not None or self.lr_mult is not None

    def describe(self) -> str:
        parts = []
        if self.selectors:
            parts.append(f"unfroze {', '.join(self.selectors)} ({len(self.names)} tensors)")
        if self.freeze_selectors:
            parts.append(f"froze {', '.join(self.freeze_selectors)} ({len(self.frozen)} tensors)")
        return f"{self.when.capitalize()}: {'; '.join(parts)}"


@dataclass(frozen=True)
class Block:
    name: str
    selectors: tuple[str, ...]
    names: tuple[str, ...]


@dataclass
class FreezePlan:
    """Everything freezing decides before training: read by param_groups, lr_schedule and train."""

    names: list[str]
    trainable: set[str]  # at the start
    events: list[ResolvedEvent]  # in the order they fire
    bn_modes: dict[str, str]  # BN layer -> auto | train | eval | frozen
    never: set[str] = field(default_factory=set)  # parameters of `frozen` BN layers: never trainable
    blocks: list[Block] = field(default_factory=list)


# --- blocks and the initial state ---------------------------------------------------------------------

def model_blocks(param_names: Sequence[str], blocks: Sequence[Any] | None = None) -> list[Block]:
    """Blocks stem -> head: `freeze.blocks` entries (a selector or a list of them) or top-level modules.

    Top-level parameters (a `cls_token`) join the first block. With `freeze.blocks`, parameters
    outside every block belong to none.
    """
    names = list(param_names)
    if blocks is None:
        root = [n for n in names if "." not in n]
        tops = group_by_component([n for n in names if "." in n])
        if not tops:
            return [Block("*", ("*",), tuple(names))] if names else []
        out = [Block(t, (t,), tuple(ns)) for t, ns in tops.items()]
        out[0] = Block(out[0].name, out[0].selectors, tuple(n for n in names if n in set(root) | set(out[0].names)))
        return out
    out, owner = [], {}
    for i, entry in enumerate(blocks):
        where = f"freeze.blocks[{i}]"
        sels = [entry] if isinstance(entry, str) else list(entry) if isinstance(entry, (list, tuple)) else None
        if not sels or not all(isinstance(s, str) for s in sels):
            raise UserError(f"{where}={entry!r}: a block is a selector or a list of selectors, "
                            "e.g. layer4 or [conv1, bn1].")
        hit = select_all(sels, names, where)
        for n in hit:
            if n in owner:
                raise UserError(f"{where}: {n!r} is already in block freeze.blocks[{owner[n]}]; "
                                "blocks must not overlap.")
            owner[n] = i
        out.append(Block("+".join(sels), tuple(sels), tuple(hit)))
    return out


def until_names(param_names: Sequence[str], selector: str) -> list[str]:
    """Every parameter up to and including the last one `selector` matches, in module order."""
    names = list(param_names)
    hit = select_all([selector], names, "freeze.until")
    return names[: names.index(hit[-1]) + 1]


def initial_trainable(param_names: Sequence[str], cfg: FreezeConfig, never: set[str] = frozenset()) -> set[str]:
    """`trainable` (all if null) minus `frozen` minus `until`; `frozen` wins. `never`: frozen BN params."""
    names = list(param_names)
    chosen = set(select_all(cfg.trainable, names, "freeze.trainable")) if cfg.trainable is not None else set(names)
    chosen -= set(select_all(cfg.frozen, names, "freeze.frozen"))
    if cfg.until is not None:
        chosen -= set(until_names(names, cfg.until))
    return chosen - set(never)


# --- the schedule -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Raw:
    key: tuple  # sort key: (epoch or step, 0 for freeze.schedule / 1 for gradual, index)
    where: str
    epoch: int | None
    step: int | None
    unfreeze: tuple[str, ...]  # parameter names it selects to unfreeze
    selectors: tuple[str, ...]
    freeze: tuple[str, ...]
    freeze_selectors: tuple[str, ...]
    lr: float | None = None
    lr_mult: float | None = None
    warmup_steps: int | None = None
    name: str | None = None


def check_lr_fields(where: str, lr: Any, lr_mult: Any, warmup: Any) -> None:
    """`lr` / `lr_mult` / `warmup_steps` of a group or an event: one of lr and lr_mult, none negative."""
    if lr is not None and lr_mult is not None:
        raise UserError(f"{where}: sets both lr={lr} and lr_mult={lr_mult}; give one (lr_mult multiplies optim.lr).")
    for key, value in (("lr", lr), ("lr_mult", lr_mult)):
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0):
            raise UserError(f"{where}.{key}={value!r}: must be a number >= 0.")
    if warmup is not None and (not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0):
        raise UserError(f"{where}.warmup_steps={warmup!r}: must be a whole number of steps >= 0.")


def _schedule_raw(names: list[str], cfg: FreezeConfig, epochs: int) -> list[_Raw]:
    raw = []
    for i, ev in enumerate(cfg.schedule):
        where = f"freeze.schedule[{i}]"
        if (ev.epoch is None) == (ev.step is None):
            raise UserError(f"{where}: give epoch: N (applied before epoch N trains) or step: N (before optimizer "
                            f"step N), {'not both' if ev.epoch is not None else 'one of them'}.")
        if ev.epoch is not None and not 0 <= ev.epoch < epochs:
            raise UserError(f"{where}.epoch={ev.epoch}: the run trains epochs 0..{epochs - 1} "
                            f"(trainer.epochs={epochs}), so this event would never happen. Lower the epoch or "
                            "raise trainer.epochs.")
        if ev.step is not None and ev.step < 0:
            raise UserError(f"{where}.step={ev.step}: steps count from 0.")
        if not ev.unfreeze and not ev.freeze:
            raise UserError(f"{where}: does nothing; give unfreeze: [selectors] and/or freeze: [selectors].")
        check_lr_fields(where, ev.lr, ev.lr_mult, ev.warmup_steps)
        if not ev.unfreeze and (ev.lr is not None or ev.lr_mult is not None or ev.warmup_steps is not None):
            raise UserError(f"{where}: lr/lr_mult/warmup_steps apply to what an event unfreezes, and this one "
                            "unfreezes nothing. Drop them or add unfreeze: [selectors].")
        up = select_all(ev.unfreeze, names, f"{where}.unfreeze") if ev.unfreeze else []
        down = select_all(ev.freeze, names, f"{where}.freeze") if ev.freeze else []
        both = set(up) & set(down)
        if both:
            raise UserError(f"{where}: unfreezes and freezes {sorted(both)[0]!r} at once; "
                            "make unfreeze and freeze disjoint.")
        at = ev.epoch if ev.epoch is not None else ev.step
        raw.append(_Raw((at, 0, i), where, ev.epoch, ev.step, tuple(up), tuple(ev.unfreeze), tuple(down),
                        tuple(ev.freeze), ev.lr, ev.lr_mult, ev.warmup_steps, ev.name))
    return raw


def _gradual_raw(gradual: Mapping[str, Any], blocks: list[Block], trainable: set[str], never: set[str],
                 epochs: int) -> list[_Raw]:
    """One event per block still frozen at the start, `every` epochs apart, from the head (or the stem)."""
    unknown = [k for k in gradual if k not in GRADUAL_KEYS]
    if unknown:
        raise UserError(f"freeze.gradual.{unknown[0]}: unknown key; valid keys: {', '.join(GRADUAL_KEYS)}.")
    every, start, side = gradual.get("every", 1), gradual.get("start"), gradual.get("from", "head")
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise UserError(f"freeze.gradual.every={every!r}: unfreeze one block every N epochs, N >= 1.")
    start = every if start is None else start
    if not isinstance(start, int) or isinstance(start, bool) or start < 0:
        raise UserError(f"freeze.gradual.start={start!r}: the epoch of the first unfreeze, >= 0.")
    if side not in ("head", "stem"):
        raise UserError(f"freeze.gradual.from={side!r}: choose head (top block first, ULMFiT) or stem.")
    check_lr_fields("freeze.gradual", gradual.get("lr"), gradual.get("lr_mult"), gradual.get("warmup_steps"))
    order = list(reversed(blocks)) if side == "head" else list(blocks)
    pending = [b for b in order if any(n not in trainable and n not in never for n in b.names)]
    if not pending:
        log.warning("freeze.gradual: every block is already trainable at the start, so it unfreezes nothing. "
                    "Freeze something (freeze.trainable, freeze.frozen, freeze.until) or drop freeze.gradual.")
    raw, left = [], []
    for k, b in enumerate(pending):
        epoch = start + k * every
        if epoch >= epochs:
            left.append(b.name)
            continue
        raw.append(_Raw((epoch, 1, k), "freeze.gradual", epoch, None, tuple(n for n in b.names if n not in never),
                        b.selectors, (), (), gradual.get("lr"), gradual.get("lr_mult"), gradual.get("warmup_steps")))
    if left:
        need = start + (len(pending) - 1) * every + 1
        log.warning("freeze.gradual: %d block(s) stay frozen (%s): the run ends before their epoch "
                    "(trainer.epochs=%d; all would be unfrozen with trainer.epochs=%d).",
                    len(left), ", ".join(left), epochs, need)
    return raw


def resolve_schedule(param_names: Sequence[str], cfg: FreezeConfig, trainable: set[str], epochs: int,
                     never: set[str] = frozenset(), blocks: list[Block] | None = None) -> list[ResolvedEvent]:
    """`freeze.schedule` and `freeze.gradual` -> checked events in firing order.

    Each event's `names` are the parameters it makes trainable (what is already trainable, or a
    frozen BN layer's parameters, are left out); `frozen` are those it freezes again.
    """
    names = list(param_names)
    raw = _schedule_raw(names, cfg, epochs)
    if cfg.gradual:
        raw += _gradual_raw(cfg.gradual, blocks if blocks is not None else model_blocks(names, cfg.blocks),
                            set(trainable), set(never), epochs)
    if any(r.step is not None for r in raw) and any(r.epoch is not None for r in raw):
        raise UserError("freeze.schedule: mixes epoch: and step: events (freeze.gradual counts as epoch events); "
                        "use one kind, since the steps per epoch are only known once the data is loaded.")
    now = set(trainable)
    events = []
    for r in sorted(raw, key=lambda r: r.key):
        when = f"epoch {r.epoch}" if r.step is None else f"step {r.step}"
        up = [n for n in r.unfreeze if n not in never]
        new = [n for n in up if n not in now]
        if r.selectors and not new:
            why = ("BatchNorm parameters that freeze.bn / freeze.bn_overrides keep frozen" if not up
                   else f"already trainable at {when}")
            log.warning("%s: everything it unfreezes (%s) is %s.", r.where, ", ".join(r.selectors), why)
        down = [n for n in r.freeze if n in now]
        if r.freeze_selectors and not down:
            log.warning("%s: everything it freezes (%s) is already frozen at %s.", r.where,
                        ", ".join(r.freeze_selectors), when)
        now.difference_update(down)
        now.update(new)
        events.append(ResolvedEvent(r.epoch, r.selectors, tuple(new), r.lr, r.step, tuple(down), r.freeze_selectors,
                                    r.lr_mult, r.warmup_steps, r.name, r.where))
    return events


def plan_freezing(model: nn.Module, cfg: FreezeConfig, epochs: int) -> FreezePlan:
    """Model + `freeze` config -> what trains at the start, the events, BN modes, blocks."""
    names = [n for n, _ in model.named_parameters()]
    modes = resolve_bn_modes(model, cfg)
    never = frozen_bn_params(model, modes)
    blocks = model_blocks(names, cfg.blocks)
    trainable = initial_trainable(names, cfg, never)
    events = resolve_schedule(names, cfg, trainable, epochs, never, blocks)
    return FreezePlan(names, trainable, events, modes, never, blocks)


# --- applying it --------------------------------------------------------------------------------------

def set_requires_grad(model: nn.Module, trainable: set[str]) -> None:
    names = [n for n, _ in model.named_parameters()]
    freeze(model, [n for n in names if n not in trainable])
    unfreeze(model, [n for n in names if n in trainable])


def unfreeze(model: nn.Module, names: Sequence[str]) -> None:
    params = dict(model.named_parameters())
    for n in names:
        params[n].requires_grad_(True)


def freeze(model: nn.Module, names: Sequence[str]) -> None:
    """Gradient off and dropped: optimizers skip a parameter whose grad is None (no update, no decay)."""
    params = dict(model.named_parameters())
    for n in names:
        params[n].requires_grad_(False)
        params[n].grad = None


def apply_event(model: nn.Module, ev: ResolvedEvent) -> None:
    freeze(model, ev.frozen)
    unfreeze(model, ev.names)
