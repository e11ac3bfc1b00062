"""Adapters inside `nn.TransformerEncoderLayer`: keep torch's fused inference path off where it would skip them.

In eval, an encoder layer whose base weights do not require grad runs one fused kernel that reads
`linear1.weight` / `linear2.weight` as tensors instead of calling the layers, so a LoRA update on
them (peft's layer forwards the base weight as `.weight`) would be left out of evaluation, though
training (which never takes that path) sees it. torch skips the fused path for a layer with a
forward pre-hook, so each adapted layer gets a hook that does nothing; an `nn.TransformerEncoder`
around it stops packing padded batches into nested tensors (a step only the fused path undoes).
Outputs are the same as the fused path's to float rounding; merged weights need none of this.
"""

from __future__ import annotations

from torch import nn

FUSED = (nn.TransformerEncoderLayer,)  # layers with a fused inference path that reads linear1/linear2 by weight


def _unfused(module: nn.Module, args: tuple) -> None:
    """A forward pre-hook that changes nothing: its presence makes torch take the layer's plain path."""
    return None


def fused_parents(model: nn.Module, targets: list[str]) -> list[str]:
    """Names of the fused layers (FUSED) that hold one of `targets` as a direct child."""
    out = []
    for t in targets:
        parent = t.rpartition(".")[0]
        if "." in t and isinstance(model.get_submodule(parent), FUSED) and parent not in out:
            out.append(parent)
    return out


def keep_off_fused_path(model: nn.Module, targets: list[str]) -> list[str]:
    """Hooks on the fused layers around `targets` (see the module doc); returns their names."""
    layers = fused_parents(model, targets)
    for name in layers:
        layer = model.get_submodule(name)
        if _unfused not in layer._forward_pre_hooks.values():
            layer.register_forward_pre_hook(_unfused)
    if layers:
        for m in model.modules():
            if isinstance(m, nn.TransformerEncoder) and any(l in layers for l in _names_in(model, m)):
                m.use_nested_tensor = False
    return layers


def _names_in(model: nn.Module, encoder: nn.Module) -> list[str]:
    inside = {id(m) for m in encoder.modules()}
    return [n for n, m in model.named_modules() if id(m) in inside]
