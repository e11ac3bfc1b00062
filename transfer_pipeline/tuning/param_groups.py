"""Selectors -> optimizer parameter groups: each parameter in exactly one group.

Every parameter is given to the optimizer up front, frozen ones included, so unfreezing later
needs no optimizer rebuild. A parameter's group is, in order:

1. the `optim.groups` entry that selects it (at its `lr` / `lr_mult`);
2. the schedule event that unfreezes it, if that event sets `lr` / `lr_mult`;
3. with `optim.layer_decay`, its block (`lr x layer_decay**k`, k blocks below the head);
4. the schedule event that unfreezes it (at `optim.lr`), without `optim.layer_decay`;
5. `default` (`optim.lr`).

`default` and names starting with `unfreeze@` are kept for generated groups. Parameters listed
by `optim.no_decay` (`bias`, `norm`, selectors) keep their group's LR but get no weight decay:
each group becomes up to two torch param groups with the same `name`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .batchnorm import bn_mode_counts
from ..errors import UserError
from .events import Event
from .freezing import Block
from ..schema import OptimConfig, ParamGroupConfig
from ..names import join_name
from ..selectors import select_all
from ..tables import format_table

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
               *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))
DEFAULT = "default"
EVENT_PREFIX = "unfreeze@"


@dataclass
class GroupSpec:
    name: str
    selectors: tuple[str, ...]
    names: list[str] = field(default_factory=list)
    lr: float = 0.0  # its peak LR: the schedule multiplies it step by step
    weight_decay: float = 0.0
    warmup_steps: int | None = None  # None: optim.scheduler.warmup_steps
    origin: str = DEFAULT  # the config key it comes from
    betas: tuple[float, float] | None = None
    eps: float | None = None
    momentum: float | None = None
    no_decay: frozenset[str] = frozenset()  # its parameters that get no weight decay


def norm_param_names(model: nn.Module) -> set[str]:
    return {join_name(m, p) for m, mod in model.named_modules() if isinstance(mod, NORM_LAYERS)
            for p, _ in mod.named_parameters(recurse=False)}


def no_decay_names(model: nn.Module, cfg: OptimConfig) -> set[str]:
    """`optim.no_decay` -> parameter names: `bias` (every *.bias), `norm` (norm layers' params), selectors."""
    entries = cfg.no_decay if cfg.no_decay is not None else (["bias", "norm"] if cfg.name.value == "adamw" else [])
    names = [n for n, _ in model.named_parameters()]
    out: set[str] = set()
    for i, entry in enumerate(entries):
        if entry == "bias":
            out |= {n for n in names if n.rsplit(".", 1)[-1] == "bias"}
        elif entry == "norm":
            out |= norm_param_names(model)
        else:
            out |= set(select_all([entry], names, f"optim.no_decay[{i}]"))
    return out


def _user_group(i: int, g: ParamGroupConfig, cfg: OptimConfig) -> GroupSpec:
    where = f"optim.groups[{i}]"
    name = g.name or g.params[0]
    if name == DEFAULT or name.startswith(EVENT_PREFIX):
        how = f"name={name!r}" if g.name else f"name defaults to its first selector {name!r}, which"
        raise UserError(f"{where}: {how} is reserved for generated groups ('{DEFAULT}': what no entry selects; "
                        f"'{EVENT_PREFIX}<epoch>': what a freeze.schedule event unfreezes). Choose another name.")
    lr = g.lr if g.lr is not None else cfg.lr * (g.lr_mult if g.lr_mult is not None else 1.0)
    return GroupSpec(name, tuple(g.params), lr=lr,
                     weight_decay=cfg.weight_decay if g.weight_decay is None else g.weight_decay,
                     warmup_steps=g.warmup_steps, origin=where, betas=tuple(g.betas) if g.betas else None,
                     eps=g.eps, momentum=g.momentum)


def _event_lr(ev: Event, cfg: OptimConfig) -> float:
    return ev.lr if ev.lr is not None else cfg.lr * (ev.lr_mult if ev.lr_mult is not None else 1.0)


def build_groups(param_names: Sequence[str], cfg: OptimConfig, events: Sequence[Event] = (),
                 blocks: Sequence[Block] | None = None,
                 no_decay: set[str] | frozenset[str] = frozenset()) -> list[GroupSpec]:
    """Partition the parameters into groups (order: optim.groups, events, layer-decay blocks, default)."""
    names = list(param_names)
    owner: dict[str, GroupSpec] = {}
    groups: list[GroupSpec] = []

    for i, g in enumerate(cfg.groups):
        spec = _user_group(i, g, cfg)
        if any(s.name == spec.name for s in groups):
            raise UserError(f"optim.groups[{i}].name: two groups are called {spec.name!r}; give each a distinct name.")
        for n in select_all(g.params, names, f"optim.groups[{i}].params"):
            if n in owner:
                raise UserError(f"optim.groups[{i}].params: {n!r} is already in group {owner[n].name!r}; a parameter "
                                "belongs to exactly one group. Make the selectors disjoint.")
            owner[n] = spec
            spec.names.append(n)
        groups.append(spec)

    event_groups: list[tuple[Event, GroupSpec]] = []
    for ev in events:
        if ev.sets_lr:
            key = f"{ev.where}.{'lr' if ev.lr is not None else 'lr_mult'}"
            value = ev.lr if ev.lr is not None else ev.lr_mult
            for n in ev.names:
                if n in owner:
                    group = f"group {owner[n].name!r}" if owner[n].name else "its own group"
                    raise UserError(f"{key}={value} ({ev.when}): sets the LR of {n!r}, which {owner[n].origin} "
                                    f"already puts in {group}. Set the LR in one place.")
        elif cfg.layer_decay is not None:
            continue  # its parameters take their block's decayed LR
        spec = GroupSpec("", ev.selectors, [n for n in ev.names if n not in owner], lr=_event_lr(ev, cfg),
                         weight_decay=cfg.weight_decay, warmup_steps=ev.warmup_steps, origin=ev.where)
        for n in spec.names:
            owner[n] = spec
        if spec.names:
            event_groups.append((ev, spec))
    groups += _name_event_groups(event_groups, {g.name for g in groups})

    if cfg.layer_decay is not None:
        for k, b in enumerate(blocks or ()):
            rest = [n for n in b.names if n not in owner]
            if not rest:
                continue
            if any(g.name == b.name for g in groups):
                clash = next(g for g in groups if g.name == b.name)
                raise UserError(f"{clash.origin}: its group name {b.name!r} is also the name optim.layer_decay gives "
                                f"block {b.name!r}; choose another name.")
            spec = GroupSpec(b.name, b.selectors, rest, lr=cfg.lr * cfg.layer_decay ** (len(blocks) - 1 - k),
                             weight_decay=cfg.weight_decay, origin="optim.layer_decay")
            for n in rest:
                owner[n] = spec
            groups.append(spec)

    rest = [n for n in names if n not in owner]
    if rest:
        groups.append(GroupSpec(DEFAULT, ("*",), rest, cfg.lr, cfg.weight_decay))
    for g in groups:
        g.no_decay = frozenset(n for n in g.names if n in no_decay)
    return groups


def _name_event_groups(pairs: list[tuple[Event, GroupSpec]], taken: set[str]) -> list[GroupSpec]:
    """`unfreeze@<epoch>` (or `unfreeze@step<N>`); events sharing it add their first selector; user names as given."""
    base = {id(s): ev.name or f"{EVENT_PREFIX}{ev.trigger.tag}" for ev, s in pairs}
    count: dict[str, int] = {}
    for ev, s in pairs:
        if not ev.name:
            count[base[id(s)]] = count.get(base[id(s)], 0) + 1
    used = set(taken)
    for ev, s in pairs:
        if ev.name:
            if ev.name in used or ev.name == DEFAULT:
                raise UserError(f"{ev.where}.name={ev.name!r}: another group already has this name; choose another.")
            s.name = ev.name
        else:
            name = base[id(s)] if count[base[id(s)]] == 1 else f"{base[id(s)]}:{ev.selectors[0]}"
            candidate, k = name, 2
            while candidate in used or candidate == DEFAULT:
                candidate, k = f"{name}#{k}", k + 1
            s.name = candidate
        used.add(s.name)
    return [s for _, s in pairs]


def torch_param_groups(model: nn.Module, groups: Sequence[GroupSpec], cfg: OptimConfig) -> list[dict]:
    """Every parameter, frozen or not, in the torch group(s) of its GroupSpec (decayed / not decayed)."""
    params = dict(model.named_parameters())
    kind = cfg.name.value
    torch_groups = []
    for g in groups:
        extra: dict = {}
        if kind == "sgd":
            extra["momentum"] = cfg.momentum if g.momentum is None else g.momentum
        else:
            betas = g.betas or (tuple(cfg.betas) if cfg.betas else None)
            if betas:
                extra["betas"] = tuple(betas)
            if g.eps is not None:
                extra["eps"] = g.eps
        decay = [params[n] for n in g.names if n not in g.no_decay]
        plain = [params[n] for n in g.names if n in g.no_decay]
        for ps, wd, nd in ((decay, g.weight_decay, False), (plain, 0.0, True)):
            if ps:
                torch_groups.append({"params": ps, "lr": g.lr, "weight_decay": wd, "name": g.name, "no_decay": nd,
                                     **extra})
    return torch_groups


def make_optimizer(model: nn.Module, groups: Sequence[GroupSpec], cfg: OptimConfig) -> Any:
    """The torch optimizer over `torch_param_groups` (torch.optim is imported only here: a plan needs none)."""
    import torch

    optimizers = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    extra = {"momentum": cfg.momentum} if cfg.name.value == "sgd" else {}
    return optimizers[cfg.name.value](torch_param_groups(model, groups, cfg), lr=cfg.lr, **extra)


def current_lrs(optimizer: Any) -> dict[str, float]:
    """{group name: LR} as the optimizer holds them now."""
    return {pg["name"]: pg["lr"] for pg in optimizer.param_groups}


def group_rows(model: nn.Module, groups: Sequence[GroupSpec], lrs: Mapping[str, float] | None = None,
               bn_modes: Mapping[str, str] | None = None) -> list[dict]:
    """One dict per group: what the table shows, also kept in summary.json. `lrs`: the LRs now (else the peaks)."""
    params = dict(model.named_parameters())
    lrs = lrs or {}
    rows = []
    for g in groups:
        ps = [params[n] for n in g.names]
        on = sum(p.requires_grad for p in ps)
        bn = bn_mode_counts(model, bn_modes, g.names) if bn_modes is not None else {}
        rows.append({"group": g.name, "selectors": list(g.selectors), "tensors": len(ps),
                     "params": sum(p.numel() for p in ps), "lr": lrs.get(g.name, g.lr), "peak_lr": g.lr,
                     "weight_decay": g.weight_decay, "no_decay_tensors": len(g.no_decay),
                     "trainable_tensors": on, "bn": dict(bn)})
    return rows


def _state(on: int, total: int) -> str:
    return "trainable" if on == total else "frozen" if on == 0 else f"partly ({on}/{total} tensors)"


def format_groups(model: nn.Module, groups: Sequence[GroupSpec], lrs: Mapping[str, float] | None = None,
                  bn_modes: Mapping[str, str] | None = None) -> str:
    """The group table: selectors, size, LR now and peak, weight decay, trainable state, BN modes."""
    rows = []
    for r in group_rows(model, groups, lrs, bn_modes):
        wd = f"{r['weight_decay']:g}"
        if r["no_decay_tensors"] and r["weight_decay"]:
            wd += f" (0 on {r['no_decay_tensors']})"
        bn = ", ".join(f"{m} {c}" if len(r["bn"]) > 1 else m for m, c in sorted(r["bn"].items())) or "-"
        rows.append([r["group"], ", ".join(r["selectors"]), r["tensors"], f"{r['params']:,}", f"{r['lr']:.4g}",
                     f"{r['peak_lr']:.4g}", wd, _state(r["trainable_tensors"], r["tensors"]), bn])
    return format_table(["group", "selectors", "tensors", "params", "lr", "peak", "wd", "state", "bn"], rows)
