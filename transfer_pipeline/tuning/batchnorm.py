"""The BatchNorm policy: which BN layers run in eval mode while the rest of the model trains.

BatchNorm statistics are not parameters, so freezing parameters does not fix them; `freeze.bn`
(and `freeze.bn_overrides` per layer) decides:

  auto    (`freeze.bn: auto`, the default; `eval` is its old spelling) statistics fixed where all
          the layer's parameters are frozen, updated once any of them trains
  train   statistics always updated      eval    statistics always fixed (affine trains if selected)
  frozen  statistics and affine parameters fixed for the whole run (never unfrozen)
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from torch import nn

from ..errors import UserError, did_you_mean
from ..schema import FreezeConfig
from ..names import join_name
from ..selectors import check_selector, matches

BN_GLOBAL = {"auto": "auto", "eval": "auto", "train": "train", "frozen": "frozen"}  # freeze.bn -> mode of layers no override names


def bn_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def bn_param_names(model: nn.Module) -> set[str]:
    return {join_name(n, p) for n, m in bn_modules(model).items() for p, _ in m.named_parameters(recurse=False)}


def resolve_bn_modes(model: nn.Module, cfg: FreezeConfig) -> dict[str, str]:
    """BN layer -> mode: `freeze.bn` for every layer, then `freeze.bn_overrides` for the ones they select.

    An override selects a layer when a selector matches the layer's name or one of its parameter
    names. Two overrides selecting one layer is an error, as is an override selecting no layer.
    """
    layers = bn_modules(model)
    modes = {n: BN_GLOBAL[cfg.bn.value] for n in layers}
    owner: dict[str, int] = {}
    for i, override in enumerate(cfg.bn_overrides):
        where = f"freeze.bn_overrides[{i}].params"
        for sel in override.params:
            check_selector(sel, where)
            hit = [n for n, m in layers.items() if matches(sel, n)
                   or any(matches(sel, join_name(n, p)) for p, _ in m.named_parameters(recurse=False))]
            if not hit:
                hint = did_you_mean(sel, layers) if layers else " The model has no BatchNorm layer."
                raise UserError(f"{where}: selector {sel!r} matches no BatchNorm layer.{hint}")
            for n in hit:
                if owner.get(n, i) != i:
                    raise UserError(f"{where}: BatchNorm layer {n!r} is already set by freeze.bn_overrides[{owner[n]}]"
                                    "; each layer gets one mode. Make the selectors disjoint.")
                owner[n] = i
                modes[n] = override.mode.value
    return modes


def frozen_bn_params(model: nn.Module, modes: Mapping[str, str]) -> set[str]:
    layers = bn_modules(model)
    return {join_name(n, p) for n, mode in modes.items() if mode == "frozen"
            for p, _ in layers[n].named_parameters(recurse=False)}


def effective_bn_mode(module: nn.Module, mode: str) -> str:
    """`auto` -> eval when the layer has parameters and none is trainable, else train."""
    if mode != "auto":
        return mode
    params = list(module.parameters(recurse=False))
    return "eval" if params and not any(p.requires_grad for p in params) else "train"


def _modes(model: nn.Module, policy: str | Mapping[str, str]) -> dict[str, str]:
    if isinstance(policy, str):
        return {n: BN_GLOBAL[policy] for n in bn_modules(model)}
    return dict(policy)


def apply_bn_policy(model: nn.Module, policy: str | Mapping[str, str]) -> list[str]:
    """After model.train(): put BN layers in eval mode as the policy says; returns their names.

    `policy` is a `freeze.bn` value (`eval`, `train`, `frozen`) or per-layer modes from
    `resolve_bn_modes`.
    """
    held = []
    layers = bn_modules(model)
    for name, mode in _modes(model, policy).items():
        if effective_bn_mode(layers[name], mode) in ("eval", "frozen"):
            layers[name].eval()
            held.append(name)
    return held


def hold_bn_modes(model: nn.Module, modes: Mapping[str, str]) -> None:
    """For training loops the pipeline does not run: keep the BN policy through `model.train()`.

    A forward pre-hook on each BN layer whose mode is not `train` puts the layer back in eval
    mode before it computes, whenever its mode says so at that moment (`auto` follows the
    layer's `requires_grad`), so its statistics never update behind the user's back. Calling
    it again replaces the hooks; `modes` from `resolve_bn_modes`.
    """
    layers = bn_modules(model)
    for name, module in layers.items():
        old = _HOLDS.pop(module, None)
        if old is not None:
            old.remove()
        mode = modes.get(name, "train")
        if mode != "train":  # the hook itself is a picklable partial: the model still deep-copies and saves
            _HOLDS[module] = module.register_forward_pre_hook(partial(_hold, mode=mode))


_HOLDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # BN layer -> its hook's handle (for replacing it)


def _hold(module: nn.Module, args: Any, mode: str) -> None:
    if module.training and effective_bn_mode(module, mode) in ("eval", "frozen"):
        module.eval()


POLICY_TEXT = {"auto": "statistics fixed while all of a layer's parameters are frozen",
               "eval": "statistics fixed while all of a layer's parameters are frozen (eval is the old name of auto)",
               "train": "statistics always updated", "frozen": "statistics and affine parameters fixed"}


def format_bn_plan(model: nn.Module, modes: Mapping[str, str], policy: str) -> str:
    """One line: the policy in words, which layers are in which mode now, and what overrides set."""
    layers = bn_modules(model)
    if not layers:
        return "BatchNorm: the model has none."
    by_mode: dict[str, list[str]] = {}
    for n, mode in modes.items():
        by_mode.setdefault(effective_bn_mode(layers[n], mode), []).append(n)
    parts = [f"{mode} {len(ns)} ({', '.join(ns[:4])}{', ...' if len(ns) > 4 else ''})" for mode, ns in by_mode.items()]
    overridden = [f"{n}={mode}" for n, mode in modes.items() if mode != BN_GLOBAL[policy]]
    if overridden:
        parts.append("set by freeze.bn_overrides: " + ", ".join(overridden))
    return f"BatchNorm (freeze.bn={policy}: {POLICY_TEXT[policy]}): " + "; ".join(parts)


def bn_mode_counts(model: nn.Module, modes: Mapping[str, str], param_names: Sequence[str]) -> Counter:
    """Effective BN modes of the layers that own any of `param_names` (for the group table)."""
    layers = bn_modules(model)
    wanted = set(param_names)
    return Counter(effective_bn_mode(layers[n], mode) for n, mode in modes.items()
                   if any(join_name(n, p) in wanted for p, _ in layers[n].named_parameters(recurse=False)))
