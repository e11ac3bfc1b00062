"""Selectors -> requires_grad, the BatchNorm policy, and the unfreeze schedule.

Frozen means `requires_grad=False`: no gradient, so the optimizer (which holds every parameter
from the start) neither updates nor decays it. BatchNorm statistics are not parameters, so the
BN policy decides which BN layers run in eval mode while the rest of the model trains.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from .errors import UserError
from .schema import FreezeConfig
from .selectors import select_all

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedEvent:
    epoch: int
    selectors: tuple[str, ...]
    names: tuple[str, ...]  # parameters this event makes trainable
    lr: float | None


def bn_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def bn_param_names(model: nn.Module) -> set[str]:
    return {f"{n}.{p}" if n else p for n, m in bn_modules(model).items() for p, _ in m.named_parameters(recurse=False)}


def initial_trainable(param_names: Sequence[str], cfg: FreezeConfig, bn_params: set[str]) -> set[str]:
    """`trainable` (all if null) minus `frozen`; `frozen` wins. BN params drop out under bn=frozen."""
    names = list(param_names)
    chosen = set(select_all(cfg.trainable, names, "freeze.trainable")) if cfg.trainable is not None else set(names)
    chosen -= set(select_all(cfg.frozen, names, "freeze.frozen"))
    if cfg.bn.value == "frozen":
        chosen -= bn_params
    return chosen


def resolve_schedule(param_names: Sequence[str], cfg: FreezeConfig, trainable: set[str], epochs: int,
                     bn_params: set[str]) -> list[ResolvedEvent]:
    """Check every event against the parameter names and the epoch count, in epoch order."""
    names = list(param_names)
    now = set(trainable)
    events = []
    for i, ev in sorted(enumerate(cfg.schedule), key=lambda t: t[1].epoch):
        where = f"freeze.schedule[{i}]"
        if not 0 <= ev.epoch < epochs:
            raise UserError(f"{where}.epoch={ev.epoch}: the run trains epochs 0..{epochs - 1} (trainer.epochs={epochs}), "
                            "so this event would never happen. Lower the epoch or raise trainer.epochs.")
        hit = select_all(ev.unfreeze, names, f"{where}.unfreeze")
        if cfg.bn.value == "frozen":
            hit = [n for n in hit if n not in bn_params]
        new = [n for n in hit if n not in now]
        if not new:
            log.warning("%s: everything it unfreezes (%s) is already trainable at epoch %d.",
                        where, ", ".join(ev.unfreeze), ev.epoch)
        now.update(new)
        events.append(ResolvedEvent(ev.epoch, tuple(ev.unfreeze), tuple(new), ev.lr))
    return events


def set_requires_grad(model: nn.Module, trainable: set[str]) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)


def unfreeze(model: nn.Module, names: Sequence[str]) -> None:
    params = dict(model.named_parameters())
    for n in names:
        params[n].requires_grad_(True)


def apply_bn_policy(model: nn.Module, policy: str) -> list[str]:
    """After model.train(): put BN layers in eval mode as the policy says; returns their names.

    `eval`: BN layers with affine parameters none of which is trainable keep their statistics.
    `frozen`: every BN layer. `train`: none.
    """
    if policy == "train":
        return []
    held = []
    for name, m in bn_modules(model).items():
        params = list(m.parameters(recurse=False))
        if policy == "frozen" or (params and not any(p.requires_grad for p in params)):
            m.eval()
            held.append(name)
    return held
