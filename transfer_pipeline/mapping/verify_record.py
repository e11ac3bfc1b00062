"""mapping.verify's recording: two models run on one input, each paired module's first call compared as it
happens (verify_compare.observe). verify.py judges a load from it; tuning/adapter_export.py checks the
adapters' merge with it (the merged copy against the adapted model, module by module)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .verify_compare import Seen, observe, tensors


def hook_all(model: nn.Module, names: Iterable[str], on_first: Any, calls: dict[str, int],
             modules: Mapping[str, nn.Module] | None = None) -> list:
    """Forward hooks calling `on_first(name, args, output)` on each module's first call; calls counted.
    `modules`: name -> module, where the names are not the model's own."""
    modules, handles = dict(model.named_modules()) if modules is None else modules, []
    for name in names:
        def hook(_m: nn.Module, args: Any, out: Any, name: str = name) -> None:
            calls[name] = calls.get(name, 0) + 1
            if calls[name] == 1:  # a module run twice (shared weights) is compared on its first call only
                on_first(name, args, out)
        handles.append(modules[name].register_forward_hook(hook))
    return handles


@dataclass
class Recording:
    """Both models' runs on one input with their paired modules' first calls (`record_pairs`)."""

    out_s: Any  # the whole models' outputs
    out_t: Any
    seen: dict[str, tuple[list, list]]  # source module -> its first call's (inputs, outputs)
    observed: list[Seen]  # target modules' first calls against their source's, in the order the target ran them
    s_calls: dict[str, int]
    t_calls: dict[str, int]
    hooked_source: bool = True  # False: a TorchScript source, whose modules take no hooks


@torch.no_grad()
def record_pairs(source_model: nn.Module, target_model: nn.Module, src_of: Mapping[str, str], s_mods: dict,
                 t_mods: dict, inputs: Any, atol: float, rtol: float, run: Callable[[nn.Module, Any, str], Any],
                 scaled: bool = False) -> Recording:
    """Run source, then target (eval, no grad) on `inputs`, comparing each target module's first call
    (`src_of`: target module name -> source module name; `s_mods` / `t_mods`: name -> module) with its
    source module's as it happens. `scaled`: atol is relative to max(1, the source output's largest
    magnitude), per module. `run(model, inputs, side)` runs a whole model. Every module's training flag is
    restored afterwards."""
    seen: dict[str, tuple[list, list]] = {}
    s_calls: dict[str, int] = {}
    t_calls: dict[str, int] = {}
    observed: list[Seen] = []
    hooked = True

    def on_source(name: str, args: Any, out: Any) -> None:
        seen[name] = (tensors(args), tensors(out))

    def on_target(name: str, args: Any, out: Any) -> None:  # compared at once: only the source's are kept
        if src_of[name] in seen:
            want = seen[src_of[name]]
            tol = atol * max([1.0, *(float(t.abs().max()) for t in want[1] if t is not None and t.numel())]) \
                if scaled else atol
            p = observe(name, src_of[name], s_mods.get(src_of[name]), t_mods[name], args, out, want, tol, rtol)
            observed.extend([p] if p is not None else [])

    modes = {m: m.training for model in (source_model, target_model) for m in model.modules()}
    handles: list = []
    try:
        source_model.eval(), target_model.eval()
        try:
            handles += hook_all(source_model, src_of.values(), on_source, s_calls, s_mods)
        except RuntimeError:  # TorchScript modules take no hooks: only the final outputs can be compared
            hooked = False
        out_s = run(source_model, inputs, "source")
        handles += hook_all(target_model, src_of, on_target, t_calls, t_mods)
        out_t = run(target_model, inputs, "target")
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return Recording(out_s, out_t, seen, observed, s_calls, t_calls, hooked)
