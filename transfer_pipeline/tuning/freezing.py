"""Selectors -> requires_grad, and the freeze/unfreeze schedule.

Frozen means `requires_grad=False` and `grad=None`: no gradient, so the optimizer (which holds
every parameter from the start) neither updates nor decays it and keeps no state for it.
Which BatchNorm layers keep their statistics fixed is batchnorm.py's job; its `frozen` mode
also keeps the layer's parameters out of every unfreeze here.

Blocks (`freeze.blocks`) are what `freeze.gradual` unfreezes one at a time and what
`optim.layer_decay` gives decaying LRs. Unset, they are the model's recognised stages and its head
(`@blocks` + `@head`, filled in by the recipe from model_parts.py: a ResNet's conv1+bn1,
layer1..layer4, fc), else the top-level modules in module order. Selectors reach this module with
`@head` / `@blocks` already expanded into module names.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from .events import Event, Trigger
from .batchnorm import frozen_bn_params, resolve_bn_modes
from ..errors import UserError
from ..schema import FreezeConfig, GradualConfig, GradualOrder
from ..names import group_by_component
from ..selectors import select_all

log = logging.getLogger(__name__)

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
    events: list[Event]  # in the order they fire
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

def _schedule_events(names: list[str], cfg: FreezeConfig) -> list[tuple[tuple, Event]]:
    """`freeze.schedule` entries (values checked by the schema) with their selectors resolved."""
    out = []
    for i, ev in enumerate(cfg.schedule):
        where = f"freeze.schedule[{i}]"
        up = select_all(ev.unfreeze, names, f"{where}.unfreeze") if ev.unfreeze else []
        down = select_all(ev.freeze, names, f"{where}.freeze") if ev.freeze else []
        both = set(up) & set(down)
        if both:
            raise UserError(f"{where}: unfreezes and freezes {sorted(both)[0]!r} at once; "
                            "make unfreeze and freeze disjoint.")
        trigger = Trigger(epoch=ev.epoch, step=ev.step)
        out.append(((trigger.value, 0, i), Event(
            trigger=trigger, selectors=tuple(ev.unfreeze), names=tuple(up), freeze_selectors=tuple(ev.freeze),
            frozen=tuple(down), lr=ev.lr, lr_mult=ev.lr_mult, warmup_steps=ev.warmup_steps, name=ev.name,
            restart=ev.restart_schedule,
            where=where)))
    return out


def _gradual_events(gradual: GradualConfig, blocks: list[Block], trainable: set[str], never: set[str],
                    epochs: int) -> list[tuple[tuple, Event]]:
    """One event per block still frozen at the start, `every` epochs apart, from the head (or the stem)."""
    order = list(reversed(blocks)) if gradual.order == GradualOrder.head_first else list(blocks)
    pending = [b for b in order if any(n not in trainable and n not in never for n in b.names)]
    if not pending:
        log.warning("freeze.gradual: every block is already trainable at the start, so it unfreezes nothing. "
                    "Freeze something (freeze.trainable, freeze.frozen, freeze.until) or drop freeze.gradual.")
    out, left = [], []
    for k, b in enumerate(pending):
        epoch = gradual.first_epoch + k * (gradual.every or 1)
        if epoch >= epochs:
            left.append(b.name)
            continue
        out.append(((epoch, 1, k), Event(
            trigger=Trigger(epoch=epoch), selectors=b.selectors, names=tuple(n for n in b.names if n not in never),
            lr=gradual.lr, lr_mult=gradual.lr_mult, warmup_steps=gradual.warmup_steps, where="freeze.gradual")))
    if left:
        need = gradual.first_epoch + (len(pending) - 1) * (gradual.every or 1) + 1
        log.warning("freeze.gradual: %d block(s) stay frozen (%s): the run ends before their epoch "
                    "(trainer.epochs=%d; all would be unfrozen with trainer.epochs=%d).",
                    len(left), ", ".join(left), epochs, need)
    return out


def resolve_schedule(param_names: Sequence[str], cfg: FreezeConfig, trainable: set[str], epochs: int,
                     never: set[str] = frozenset(), blocks: list[Block] | None = None) -> list[Event]:
    """`freeze.schedule` and `freeze.gradual` -> events in firing order.

    Each event's `names` are the parameters it makes trainable (what is already trainable, or a
    frozen BN layer's parameters, are left out); `frozen` are those it freezes again.
    """
    names = list(param_names)
    keyed = _schedule_events(names, cfg)
    if cfg.gradual.enabled:
        keyed += _gradual_events(cfg.gradual, blocks if blocks is not None else model_blocks(names, cfg.blocks),
                                 set(trainable), set(never), epochs)
    now = set(trainable)
    events = []
    for _, ev in sorted(keyed, key=lambda kv: kv[0]):
        up = [n for n in ev.names if n not in never]
        new = [n for n in up if n not in now]
        if ev.selectors and not new:
            why = ("BatchNorm parameters that freeze.bn / freeze.bn_overrides keep frozen" if not up
                   else f"already trainable at {ev.when}")
            log.warning("%s: everything it unfreezes (%s) is %s.", ev.where, ", ".join(ev.selectors), why)
        down = [n for n in ev.frozen if n in now]
        if ev.freeze_selectors and not down:
            log.warning("%s: everything it freezes (%s) is already frozen at %s.", ev.where,
                        ", ".join(ev.freeze_selectors), ev.when)
        now.difference_update(down)
        now.update(new)
        events.append(replace(ev, names=tuple(new), frozen=tuple(down)))
    return events


def trained_by(param_names: Sequence[str], cfg: FreezeConfig, trainable: set[str], never: set[str] = frozenset(),
               blocks: list[Block] | None = None) -> dict[str, str]:
    """Every parameter `freeze` trains at some point -> the first key that does (`freeze.trainable`,
    `freeze.schedule[i].unfreeze`, `freeze.gradual`), whatever the number of epochs; nothing is logged.

    Adapters need this before peft runs: what trains in full is saved with the adapter.
    """
    names = list(param_names)
    out = {n: "freeze.trainable" for n in names if n in trainable}
    for _, ev in _schedule_events(names, cfg):
        out.update({n: f"{ev.where}.unfreeze" for n in ev.names if n not in out and n not in never})
    if cfg.gradual.enabled:
        for b in blocks if blocks is not None else model_blocks(names, cfg.blocks):
            if any(n not in trainable and n not in never for n in b.names):
                out.update({n: "freeze.gradual" for n in b.names if n not in out and n not in never})
    return out


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


def apply_event(model: nn.Module, ev: Event) -> None:
    freeze(model, ev.frozen)
    unfreeze(model, ev.names)
