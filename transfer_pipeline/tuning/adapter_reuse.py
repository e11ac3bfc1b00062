"""`source.adapter`: a saved adapter (read by sources/saved_adapter.py) put back onto its base, through the same
injection as a fresh run.

`check_modules` finds the saved adapter's layers and head in this model; `saved_plan` turns it into
the AdapterPlan `adapters.inject` takes, so the adapted model has exactly the layers and names a run
with these adapters has; `check_same` compares it with an `adapters=...` config given too.
`check_fits` compares the injected model's adapter tensors (peft's own names, as save_pretrained
writes them) with the file's, and `load_saved` puts the file's tensors in, checked bitwise after.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from torch import nn

from ..errors import UserError, did_you_mean
from .adapters import AdapterPlan, _layers, _unsupported_reason

log = logging.getLogger(__name__)

WHERE = "source.adapter"


def check_modules(model: nn.Module, saved: Any) -> list[str]:
    """The saved targets as this model's layers (in module order): each must be here and take an adapter;
    the saved head must be here too."""
    layers = _layers(model)
    everything = [n for n, _ in model.named_modules() if n]
    absent = [t for t in saved.targets + saved.head if t not in set(everything)]
    if absent:
        raise UserError(f"{WHERE}: the adapter in {saved.folder} is on module(s) {type(model).__name__} does not "
                        f"have: {', '.join(absent[:6])}{' ...' if len(absent) > 6 else ''}.{did_you_mean(absent[0], everything)} "
                        "It was trained on another model (or with other names): give its base (model, source.path).")
    for t in saved.targets:
        reason = _unsupported_reason(model, t, layers[t]) if t in layers else "a module without parameters"
        if reason is not None:
            raise UserError(f"{WHERE}: the adapter in {saved.folder} is on {t!r}, which in {type(model).__name__} is "
                            f"{reason}; adapters go on Linear, Conv1d, Conv2d and Embedding layers.")
    return [n for n in layers if n in set(saved.targets)]


def saved_plan(model: nn.Module, saved: Any, targets: list[str], dropout: float,
               lr: float | None) -> AdapterPlan:
    """The plan `inject` takes for this adapter (no freeze config: eval, predict, export)."""
    kinds = dict(Counter(type(model.get_submodule(t)).__name__ for t in targets))
    return AdapterPlan(saved.method, saved.rank, saved.alpha, dropout, lr, targets, kinds, list(saved.head),
                       list(model.state_dict()), sum(p.numel() for p in model.parameters()))


def check_same(saved: Any, plan: AdapterPlan, given: str) -> None:
    """The adapters a config asks for (`given`, e.g. 'adapters=lora') must be the saved adapter's."""
    pairs = [("method", saved.method, plan.method), ("rank", saved.rank, plan.rank),
             ("alpha", saved.alpha, plan.alpha), ("targets", sorted(saved.targets), sorted(plan.targets)),
             ("head (modules_to_save; freeze.trainable)", sorted(saved.head), sorted(plan.head))]
    diff = [f"{key}: {a} in the adapter, {b} in the config" for key, a, b in pairs if a != b]
    if diff:
        raise UserError(f"{WHERE}: the adapter in {saved.folder} is not the one {given} asks for:\n  "
                        + "\n  ".join(diff) + "\nThe adapter's tensors have its own rank and layers: set the config "
                        f"to match (adapters={saved.method} adapters.rank={saved.rank} adapters.alpha={saved.alpha:g}, "
                        "adapters.targets=null takes its layers), or drop adapters=... to evaluate, predict or export.")


def check_fits(peft_model: Any, saved: Any) -> None:
    """The file's tensors must be exactly the injected model's adapter tensors, shape for shape."""
    from peft import get_peft_model_state_dict

    want = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(peft_model).items()}
    missing, extra = [k for k in want if k not in saved.shapes], [k for k in saved.shapes if k not in want]
    if missing or extra:
        raise UserError(f"{WHERE}: {saved.weights} does not hold the tensors its config describes: "
                        f"{'missing ' + ', '.join(missing[:4]) if missing else ''}{'; ' if missing and extra else ''}"
                        f"{'unexpected ' + ', '.join(extra[:4]) if extra else ''}.")
    model = peft_model.base_model.model
    for k, shape in want.items():
        if saved.shapes[k] != shape:
            inner = k[len(saved.prefix):]
            owner = next((t for t in saved.targets + saved.head if inner.startswith(t + ".")), inner)
            layer = model.get_submodule(owner)
            layer = getattr(layer, "base_layer", None) or getattr(layer, "original_module", None) or layer
            raise UserError(f"{WHERE}: {inner} is {tuple(saved.shapes[k])} in the adapter and {shape} here (rank "
                            f"{saved.rank} on {owner!r}, here {layer}); the adapter was trained on a base whose layers "
                            "have other sizes. Give its base (model, source.path).")


def load_saved(peft_model: Any, saved: Any, allow_nonfinite: bool = False) -> None:
    """The file's tensors into the injected adapters (peft's set_peft_model_state_dict), checked bitwise after."""
    import torch
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = saved.weights
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{WHERE}: cannot read {path} as safetensors ({str(e)[:200]}); re-save the adapter.") from None
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad and not allow_nonfinite:
        raise UserError(f"{WHERE}: {path} holds NaN or inf in {', '.join(bad[:4])}; it would make every output NaN "
                        "(source.allow_nonfinite=true puts it on anyway).")
    set_peft_model_state_dict(peft_model, tensors)
    now = get_peft_model_state_dict(peft_model)
    wrong = [k for k, t in tensors.items() if not torch.equal(now[k].detach().cpu(), t.to(now[k].dtype))]
    if wrong:
        raise RuntimeError(f"peft did not load the adapter's {wrong[:4]} as saved")
