"""Selectors -> optimizer parameter groups: each parameter in exactly one group.

Every parameter is given to the optimizer up front, frozen ones included, so unfreezing later
needs no optimizer rebuild. A parameter's group is, in order: the `optim.groups` entry that
selects it, else the schedule event that unfreezes it (at that event's `lr`), else `default`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import UserError
from .freezing import ResolvedEvent
from .report import format_table
from .schema import OptimConfig
from .selectors import select_all

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


@dataclass
class GroupSpec:
    name: str
    selectors: tuple[str, ...]
    names: list[str] = field(default_factory=list)
    lr: float = 0.0
    weight_decay: float = 0.0


def build_groups(param_names: Sequence[str], cfg: OptimConfig, events: Sequence[ResolvedEvent]) -> list[GroupSpec]:
    names = list(param_names)
    owner: dict[str, str] = {}
    groups: list[GroupSpec] = []
    for i, g in enumerate(cfg.groups):
        where = f"optim.groups[{i}]"
        spec = GroupSpec(g.name or g.params[0], tuple(g.params),
                         lr=cfg.lr if g.lr is None else g.lr,
                         weight_decay=cfg.weight_decay if g.weight_decay is None else g.weight_decay)
        if any(s.name == spec.name for s in groups):
            raise UserError(f"{where}.name: two groups are called {spec.name!r}; give each a distinct name.")
        for n in select_all(g.params, names, f"{where}.params"):
            if n in owner:
                raise UserError(f"{where}.params: {n!r} is already in group {owner[n]!r}; a parameter belongs to "
                                "exactly one group. Make the selectors disjoint.")
            owner[n] = spec.name
            spec.names.append(n)
        groups.append(spec)

    for ev in events:
        spec = GroupSpec(f"unfreeze@{ev.epoch}", ev.selectors, lr=cfg.lr if ev.lr is None else ev.lr,
                         weight_decay=cfg.weight_decay)
        in_groups = [n for n in ev.names if n in owner]
        if ev.lr is not None and in_groups:
            raise UserError(f"freeze.schedule (epoch {ev.epoch}): sets lr={ev.lr} for {in_groups[0]!r}, which "
                            f"optim.groups already puts in {owner[in_groups[0]]!r}. Set the LR in one place.")
        spec.names = [n for n in ev.names if n not in owner]
        for n in spec.names:
            owner[n] = spec.name
        if spec.names:
            groups.append(spec)

    rest = [n for n in names if n not in owner]
    if rest:
        groups.append(GroupSpec("default", ("*",), rest, cfg.lr, cfg.weight_decay))
    return groups


def make_optimizer(model: nn.Module, groups: Sequence[GroupSpec], cfg: OptimConfig) -> torch.optim.Optimizer:
    params = dict(model.named_parameters())
    torch_groups = [{"params": [params[n] for n in g.names], "lr": g.lr, "weight_decay": g.weight_decay,
                     "name": g.name} for g in groups]
    extra = {"momentum": cfg.momentum} if cfg.name.value == "sgd" else {}
    return OPTIMIZERS[cfg.name.value](torch_groups, lr=cfg.lr, **extra)


def format_groups(model: nn.Module, groups: Sequence[GroupSpec], optimizer: torch.optim.Optimizer | None = None) -> str:
    params = dict(model.named_parameters())
    lrs = {pg["name"]: pg["lr"] for pg in optimizer.param_groups} if optimizer else {}
    rows = []
    for g in groups:
        ps = [params[n] for n in g.names]
        on = sum(p.requires_grad for p in ps)
        state = "trainable" if on == len(ps) else "frozen" if on == 0 else f"partly ({on}/{len(ps)} tensors)"
        rows.append([g.name, ", ".join(g.selectors), len(ps), f"{sum(p.numel() for p in ps):,}",
                     f"{lrs.get(g.name, g.lr):g}", f"{g.weight_decay:g}", state])
    return format_table(["group", "selectors", "tensors", "params", "lr", "wd", "state"], rows)
