"""Freezing and parameter groups on a model with adapters (tuning/adapters.py put them in).

`freeze` and `optim` selectors are written in the target's names. They are resolved on the target's
parameter names as the adapted model has them (`NameView`), and each resolved name is mapped to the
adapted name of the parameter the forward uses: a full-trained module's trained copy, a target's
base_layer (frozen; training it in full is refused by plan_adapters).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from torch import nn

from ..errors import UserError
from ..schema import FreezeConfig, OptimConfig
from ..selectors import select_all
from .adapters import ADAPTER_GROUP, COPY, HEAD_COPY, AdapterPlan, _under, target_name
from .batchnorm import effective_bn_mode, bn_modules, frozen_bn_params, resolve_bn_modes
from .freezing import Block, FreezePlan, initial_trainable, model_blocks, resolve_schedule
from .param_groups import DEFAULT, GroupSpec, build_groups, no_decay_names

@dataclass
class NameView:
    """The adapted model's parameters in the target's names."""

    names: list[str]  # the target's parameter names, in module order
    adapted: dict[str, str]  # target name -> adapted name (the parameter the forward uses)
    adapters: dict[str, list[str]]  # adapter target -> its adapter parameters (adapted names)

    def owned(self, names: Sequence[str]) -> list[str]:
        """Target names -> adapted names, plus the adapters of the targets whose weight (first parameter) is among them."""
        chosen = set(names)
        out = [self.adapted[n] for n in names]
        for t, own in self.adapters.items():
            if next(n for n in self.names if _under(n, [t])) in chosen:
                out += own
        return out


def name_view(model: nn.Module, plan: AdapterPlan) -> NameView:
    adapted = {}
    for n, _ in model.named_parameters():
        t = target_name(n, plan)
        if t is not None:
            adapted[t] = n
    return NameView(list(adapted), adapted, {t: [n for n in plan.adapter_names if _under(n, [t])] for t in plan.targets})


def adapter_freeze_plan(model: nn.Module, freeze: FreezeConfig, plan: AdapterPlan, epochs: int = 1) -> FreezePlan:
    """What trains: the adapters from the start, and what `freeze` trains in full (the trained copies of
    plan.head's modules), with its events; selectors in the target's names. The BN statistics of the base fixed."""
    view = name_view(model, plan)
    modes = resolve_bn_modes(model, freeze)
    never = frozen_bn_params(model, modes)
    never_t = {t for t, a in view.adapted.items() if a in never}
    blocks = model_blocks(view.names, freeze.blocks)
    start = initial_trainable(view.names, freeze, never_t)
    events = resolve_schedule(view.names, freeze, start, epochs, never_t, blocks)
    lost = [n for n in set(start).union(*(ev.names for ev in events)) if COPY not in view.adapted[n]]
    if lost:  # plan_adapters planned from the same freeze config: a mismatch is a bug
        raise RuntimeError(f"freeze trains {sorted(lost)[:3]} in full, which peft does not save: {plan.head}")
    layers = bn_modules(model)
    moving = [n for n, mode in modes.items() if not _under(n, plan.head) and effective_bn_mode(layers[n], mode) == "train"]
    if moving:
        raise UserError(f"freeze.bn: BatchNorm layer {moving[0]!r} of the base would update its statistics while training "
                        "(freeze.bn=train, a train override, or a layer without affine parameters under bn=auto); with "
                        "adapters the base stays as loaded, and this is not supported yet with adapters. Use "
                        "freeze.bn=auto (or frozen), or train the layer in full (freeze.trainable, freeze.schedule).")
    to = view.adapted
    events = [replace(ev, names=tuple(to[n] for n in ev.names), frozen=tuple(to[n] for n in ev.frozen)) for ev in events]
    blocks = [Block(b.name, b.selectors, tuple(view.owned(b.names))) for b in blocks]
    return FreezePlan([n for n, _ in model.named_parameters()], {to[n] for n in start} | set(plan.adapter_names),
                      events, modes, never, blocks)


def adapter_no_decay(model: nn.Module, plan: AdapterPlan, optim: OptimConfig) -> set[str]:
    """`optim.no_decay` on the adapted model: `bias` and `norm` as without adapters, selectors in the target's
    names (a target selected by its name takes its adapter along)."""
    words = [e for e in (optim.no_decay or []) if e in ("bias", "norm")]
    out = no_decay_names(model, replace(optim, no_decay=words)) if optim.no_decay is not None else no_decay_names(model, optim)
    view = name_view(model, plan)
    for i, entry in enumerate(optim.no_decay or []):
        if entry not in ("bias", "norm"):
            out |= set(view.owned(select_all([entry], view.names, f"optim.no_decay[{i}]")))
    return out


def adapter_groups(model: nn.Module, plan: AdapterPlan, optim: OptimConfig, no_decay: set[str],
                   freeze: FreezePlan | None = None) -> list[GroupSpec]:
    """The groups of build_groups (optim.groups, event LRs, optim.layer_decay, `default`) in the target's names,
    moved to the adapted names, and the adapters' own groups.

    An adapter goes with its layer's weight when an optim.groups entry selects that (`params: [block1]`
    gives block1's adapter the group's LR); else, with optim.layer_decay, to `adapters:<block>` at
    adapters.lr x layer_decay**k (k blocks below the head); else to `adapters` (adapters.lr, default optim.lr).
    peft's frozen copies (`original_module`) are in `default`.
    """
    view = name_view(model, plan)
    back = {a: t for t, a in view.adapted.items()}
    events = [replace(ev, names=tuple(back[n] for n in ev.names), frozen=tuple(back[n] for n in ev.frozen))
              for ev in (freeze.events if freeze else [])]
    blocks = [Block(b.name, b.selectors, tuple(back[n] for n in b.names if n in back))
              for b in (freeze.blocks if freeze else [])]
    groups = build_groups(view.names, optim, events, blocks if optim.layer_decay is not None else None)
    owner = {n: g for g in groups for n in g.names}
    for g in groups:
        g.names = [view.adapted[n] for n in g.names]
    lr = plan.lr if plan.lr is not None else optim.lr
    own = [GroupSpec(ADAPTER_GROUP, ("adapters.targets",), [], lr=lr, weight_decay=optim.weight_decay,
                     origin="adapters.lr")]
    block_of = {n: k for k, b in enumerate(blocks) for n in b.names}
    for t, adapter in view.adapters.items():
        weight = next(n for n in view.names if _under(n, [t]))
        if owner[weight].origin.startswith("optim.groups"):
            owner[weight].names += adapter
        elif optim.layer_decay is not None and weight in block_of:
            b = blocks[block_of[weight]]
            name = f"{ADAPTER_GROUP}:{b.name}"
            spec = next((g for g in own if g.name == name), None)
            if spec is None:
                spec = GroupSpec(name, b.selectors, [], lr=lr * optim.layer_decay ** (len(blocks) - 1 - block_of[weight]),
                                 weight_decay=optim.weight_decay, origin="adapters.lr x optim.layer_decay")
                own.append(spec)
            spec.names += adapter
        else:
            own[0].names += adapter
    clash = next(((g, a) for a in own if a.names for g in groups if g.name == a.name), None)
    if clash is not None:
        raise UserError(f"{clash[0].origin}: its group name {clash[1].name!r} is the name of the adapters' group "
                        f"({clash[1].origin}); choose another name.")
    copies = [n for n, _ in model.named_parameters() if n not in back and n not in set(plan.adapter_names)]
    if copies:
        default = next((g for g in groups if g.name == DEFAULT), None)
        if default is None:
            default = GroupSpec(DEFAULT, ("*",), [], optim.lr, optim.weight_decay)
            groups.append(default)
        default.names += copies
    order = {n: i for i, (n, _) in enumerate(model.named_parameters())}
    out = [g for g in own if g.names] + groups
    for g in out:
        g.names.sort(key=order.__getitem__)
        g.no_decay = frozenset(n for n in g.names if n in no_decay)
    return out


def head_copies(model: nn.Module) -> set[str]:
    """Parameters of peft's frozen copies of what trains in full (not used by the forward, not counted)."""
    return {n for n, _ in model.named_parameters() if HEAD_COPY in f".{n}"}

