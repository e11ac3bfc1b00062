"""`adapters`: LoRA and its family on a frozen base, through Hugging Face peft driven by resolved module names.

`plan_adapters` reads the built, loaded target: `adapters.targets` (selectors, `@head` / `@blocks`
already expanded) become exact module names of layers peft supports; `inject` hands exactly those
names to peft. The model is adapted in place (`peft.get_peft_model` wraps it, and the wrapper's
`base_model.model` is our model object), so the rest of the pipeline keeps working on our model
with its own names: a target `block1.0` now holds `block1.0.base_layer.weight` (the frozen base
weight) and `block1.0.lora_A.default.weight` / `lora_B` (the adapter); the head, which trains in
full, is peft's `modules_to_save` (`head.modules_to_save.default.*`, with a frozen copy of the
loaded head in `head.original_module.*`); so does each base layer that `freeze` trains in full.
adapter_methods.py builds each method's peft config, adapter_tuning.py freezes and groups the
adapted model, fused_layers.py keeps torch's fused encoder path from skipping adapters,
adapter_export.py merges and writes.

peft is imported only in `inject`, and only when adapters are on.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import UserError, did_you_mean
from ..names import join_name
from ..schema import AdaptersConfig, FreezeConfig
from ..selectors import check_selector, matches, select
from .batchnorm import frozen_bn_params, resolve_bn_modes
from .freezing import initial_trainable, trained_by

log = logging.getLogger(__name__)

SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)  # layers that get an adapter (peft's LoRA layers)
DEFAULT_KINDS = (nn.Linear, nn.Conv1d, nn.Conv2d)  # adapters.targets=null: these, outside the head and freeze.frozen
KINDS = "Linear, Conv1d, Conv2d and Embedding layers"
ADAPTER_GROUP = "adapters"
HEAD_COPY = ".original_module."  # peft's frozen copy of a modules_to_save module: never used by the forward


@dataclass
class AdapterPlan:
    """What the adapters will be, decided before peft is imported (mode=plan shows it)."""

    method: str  # lora | dora
    rank: int
    alpha: float
    dropout: float
    lr: float | None
    targets: list[str]  # module names of the layers that get an adapter
    kinds: dict[str, int]  # layer class -> count, for the plan
    head: list[str]  # modules that train in full and are saved with the adapter (peft modules_to_save): @head, `layers`
    base_keys: list[str]  # the base's state_dict keys: what the merged model.safetensors must hold, in this order
    base_params: int  # parameters of the base (the head counted once)
    adapter_params: int = 0  # filled in by inject
    head_params: int = 0
    adapter_names: list[str] = field(default_factory=list)  # the adapter parameters' names in the adapted model
    trained: list[str] | None = None  # target names of the parameters `freeze` ever trains in full (None: all of `head`)
    later: dict[str, str] = field(default_factory=dict)  # modules of `head` that start frozen -> the key unfreezing them
    layers: list[str] = field(default_factory=list)  # modules of `head` outside @head: base layers trained in full

    @property
    def trainable_params(self) -> int:
        return self.adapter_params + self.head_params

    @property
    def trainable_fraction(self) -> float:
        return self.trainable_params / max(self.base_params + self.adapter_params, 1)

    def describe(self) -> str:
        shown = ", ".join(self.targets[:8]) + (f", ... (+{len(self.targets) - 8} more)" if len(self.targets) > 8 else "")
        kinds = ", ".join(f"{k} x{c}" for k, c in self.kinds.items())
        head = ", ".join(self.head) if self.head else "none (the head is frozen too)"
        keys = dict.fromkeys(self.later.values())
        later = "".join(f"; {', '.join(m for m, k in self.later.items() if k == key)} from {key} (frozen until then)"
                        for key in keys)
        text = (f"Adapters: {self.method}, rank {self.rank}, alpha {self.alpha:g}, dropout {self.dropout:g}, "
                f"on {len(self.targets)} layer(s) ({kinds}): {shown}\n  trains in full and is saved with the "
                f"adapter: {head}{later}; the rest of the base is frozen")
        if self.adapter_params:
            text += (f"\n  trainable {self.trainable_params:,} of {self.base_params + self.adapter_params:,} "
                     f"parameters ({100 * self.trainable_fraction:.2f}%): adapters {self.adapter_params:,}, "
                     f"{'head and base layers in full' if self.layers else 'head'} {self.head_params:,}")
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "targets": list(self.targets), "rank": self.rank, "alpha": self.alpha,
                "dropout": self.dropout, "head": list(self.head), "adapter_params": self.adapter_params,
                "trainable_params": self.trainable_params, "trainable_fraction": self.trainable_fraction,
                **({"layers_in_full": list(self.layers), "unfrozen_later": dict(self.later)} if self.layers or self.later
                   else {})}


# --- which layers ---------------------------------------------------------------------------------------

def _layers(model: nn.Module) -> dict[str, nn.Module]:
    """Modules that hold parameters of their own, by name."""
    return {n: m for n, m in model.named_modules() if n and next(m.parameters(recurse=False), None) is not None}


def _unsupported_reason(model: nn.Module, name: str, module: nn.Module) -> str | None:
    if not isinstance(module, SUPPORTED):
        return f"a {type(module).__name__}"
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    if isinstance(parent, nn.MultiheadAttention):  # it uses out_proj.weight itself: an adapter there would do nothing
        return "the output projection of an nn.MultiheadAttention, which reads its weight directly (not its forward)"
    return None  # linear1/linear2 of an nn.TransformerEncoderLayer: its fused path is kept off (fused_layers.py)


def _under(name: str, roots: Sequence[str]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


def resolve_targets(model: nn.Module, selectors: Sequence[str] | None, head: Sequence[str],
                    where: str = "adapters.targets", skip: Sequence[str] = ()) -> list[str]:
    """Selectors -> names of the layers that get an adapter (module order); null: every Linear / Conv1d / Conv2d
    layer outside `head` and `skip` (the layers freeze.frozen selects).

    A selector matching a container or a glob takes the supported layers it reaches; one that reaches
    none, or that names a single layer of another kind, is an error naming it; one matching nothing
    is an error with close names.
    """
    layers = _layers(model)
    bad = {n: _unsupported_reason(model, n, m) for n, m in layers.items()}
    if selectors is None:
        chosen = [n for n in layers if bad[n] is None and isinstance(layers[n], DEFAULT_KINDS)
                  and not _under(n, head) and n not in skip]
        if not chosen:
            raise UserError(f"{where}=null: {type(model).__name__} has no Linear or Conv layer outside its head "
                            f"({', '.join(head) or 'none'}), freeze.frozen and the layers freeze trains in full; name "
                            f"the layers that get adapters in {where} (and leave them out of what freeze unfreezes).")
        return chosen
    picked: set[str] = set()
    for i, sel in enumerate(selectors):
        w = f"{where}[{i}]"
        check_selector(sel, w)
        hit = select(sel, list(layers), w)
        if not hit:
            everything = [n for n, _ in model.named_modules() if n]
            raise UserError(f"{w}: selector {sel!r} matches no layer with parameters.{did_you_mean(sel, everything)}")
        exact = [n for n in hit if bad[n] is not None and (n == sel or (sel.startswith("re:") and len(hit) == 1))]
        good = [n for n in hit if bad[n] is None]
        if exact or not good:
            n = (exact or hit)[0]
            raise UserError(f"{w}: {sel!r} selects {n!r}, {bad[n]}; adapters go on {KINDS}. Select those (e.g. the "
                            "Linear/Conv layers inside a block: the block's name selects them) or drop it.")
        picked.update(good)
    return [n for n in layers if n in picked]


def _full_modules(model: nn.Module, trained: dict[str, str], head: Sequence[str]) -> dict[str, str]:
    """The modules that train in full (peft's modules_to_save), in module order -> the key that first trains them:
    each @head module with a trained parameter, and outside the head the layer holding each trained parameter."""
    owners: dict[str, str] = {}
    for n, key in trained.items():
        owner = next((h for h in head if _under(n, [h])), n.rpartition(".")[0])
        if not owner:
            raise UserError(f"{key}: trains {n!r}, a parameter of the model itself rather than of one of its layers; "
                            "with adapters what trains in full is saved with the adapter as whole layers (peft's "
                            f"modules_to_save), so this is not supported yet with adapters. Leave {n!r} frozen.")
        owners.setdefault(owner, key)
    order = [n for n, _ in model.named_modules()]
    outer = [m for m in owners if not any(o != m and _under(m, [o]) for o in owners)]  # a copy of o holds m
    return {m: owners[m] for m in sorted(outer, key=order.index)}


def plan_adapters(model: nn.Module, cfg: AdaptersConfig, targets: Sequence[str] | None, freeze: FreezeConfig,
                  head: Sequence[str]) -> AdapterPlan:
    """The loaded base + `adapters` + `freeze` (selectors expanded) -> what gets adapters and what trains in full.

    Whatever `freeze` trains at some point (freeze.trainable, a freeze.schedule event, freeze.gradual)
    trains in full beside the adapters: the @head modules it touches and, outside the head, each
    layer holding such a parameter become peft's modules_to_save (saved with the adapter, merged back
    in the target's names). A layer gets an adapter or trains in full, not both; `freeze.frozen`
    layers get no adapter; `adapters.targets=null` leaves both out.
    """
    names = [n for n, _ in model.named_parameters()]
    never = frozen_bn_params(model, resolve_bn_modes(model, freeze))
    start = initial_trainable(names, freeze, never)
    trained = trained_by(names, freeze, start, never)
    full = _full_modules(model, trained, head)
    frozen_layers = [t for t, m in _layers(model).items()
                     if any(matches(sel, join_name(t, p)) for sel in freeze.frozen for p, _ in m.named_parameters(recurse=False))]
    chosen = resolve_targets(model, targets, head, skip=frozen_layers + list(full))
    for t in chosen:
        m = next((m for m in full if _under(t, [m]) or _under(m, [t])), None)
        if m is None:
            continue
        if _under(m, head):
            raise UserError(f"adapters.targets: {t!r} is in the head (@head = {', '.join(head)}), which trains in full "
                            f"({full[m]}); a layer gets an adapter or trains in full, not both. Drop it from "
                            "adapters.targets, or freeze the head (freeze.trainable=[]).")
        n = next(n for n in trained if _under(n, [m]))
        raise UserError(f"adapters.targets: {t!r} gets an adapter, and {full[m]} trains {n!r} in full; a layer gets "
                        f"an adapter or trains in full, not both. Drop {t!r} from adapters.targets, or leave it out of "
                        f"{full[m]} (select the other layers by name, e.g. {m.rpartition('.')[0] or m}.<layer>).")
    for i, sel in enumerate(freeze.frozen):
        for t in chosen:
            if any(matches(sel, join_name(t, p)) for p, _ in model.get_submodule(t).named_parameters(recurse=False)):
                raise UserError(f"adapters.targets: {t!r} is also selected by freeze.frozen[{i}]={sel!r}; a frozen layer "
                                "gets no adapter. Drop it from one of them.")
    layers = dict(model.named_modules())
    plan = AdapterPlan(cfg.method.value, cfg.rank, float(cfg.alpha), float(cfg.dropout), cfg.lr, chosen,
                       dict(Counter(type(layers[t]).__name__ for t in chosen)), list(full), list(model.state_dict()),
                       sum(p.numel() for p in model.parameters()))
    plan.trained = [n for n in names if n in trained]
    plan.later = {m: key for m, key in full.items() if not any(_under(n, [m]) for n in start)}
    plan.layers = [m for m in full if not _under(m, head)]
    return plan


# --- putting them in --------------------------------------------------------------------------------------

def exact_pattern(names: Sequence[str]) -> str:
    """A regex peft fullmatches against module names: exactly these (a list would also match longer names
    that end with one of them)."""
    return "(?:" + "|".join(re.escape(n) for n in names) + ")"


def inject(model: nn.Module, plan: AdapterPlan) -> Any:
    """Adapters into `model` in place (peft.get_peft_model); returns the PeftModel that wraps it (to save and merge).

    Afterwards exactly the adapters and the head's trainable copy require grad, and the layers peft
    wrapped are checked to be exactly the planned ones.
    """
    from peft import get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import ModulesToSaveWrapper

    from .adapter_methods import peft_config
    from .fused_layers import keep_off_fused_path

    config = peft_config(model, plan)  # the method's peft config (tuning/adapter_methods.py)
    try:
        peft_model = get_peft_model(model, config)
    except (ValueError, TypeError, NotImplementedError) as e:
        raise UserError(f"adapters ({plan.method}): peft cannot put adapters on {', '.join(plan.targets[:5])}: "
                        f"{str(e).splitlines()[0][:300]}") from None
    assert peft_model.base_model.model is model  # adapted in place: our names, our object
    keep_off_fused_path(model, plan.targets)  # else an encoder layer's eval would skip its adapters
    wrapped = [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    saved = [n for n, m in model.named_modules() if isinstance(m, ModulesToSaveWrapper)]
    if sorted(wrapped) != sorted(plan.targets) or sorted(saved) != sorted(plan.head):
        extra = sorted(set(saved) - set(plan.head)) or sorted(set(wrapped) - set(plan.targets))
        raise UserError(f"adapters: peft would also wrap {extra[:3] or 'fewer layers than planned'} (its modules_to_save "
                        f"matches every module whose name ends like the head's, {plan.head}); a model with such names "
                        "is not supported yet with adapters.")
    params = dict(model.named_parameters())
    plan.adapter_names = [n for n, p in params.items() if p.requires_grad and _under(n, plan.targets)]
    trains_head = [n for n, p in params.items() if p.requires_grad and _under(n, plan.head)]
    stray = [n for n, p in params.items() if p.requires_grad and n not in plan.adapter_names and n not in trains_head]
    assert not stray, f"peft left base parameters trainable: {stray[:5]}"
    plan.adapter_params = sum(params[n].numel() for n in plan.adapter_names)
    in_full = set(plan.trained) if plan.trained is not None else None  # freeze may train part of a module's copy
    plan.head_params = sum(params[n].numel() for n in trains_head if in_full is None or target_name(n, plan) in in_full)
    return peft_model


# --- names in the adapted model ---------------------------------------------------------------------------

COPY = ".modules_to_save.default"  # peft's trained copy of a modules_to_save module (adapter name "default")
BASE = ".base_layer"  # the frozen layer inside a LoRA layer


def target_name(name: str, plan: AdapterPlan) -> str | None:
    """An adapted model's parameter name -> the target's name of that parameter; None for adapter parameters
    and peft's frozen copies (`original_module`), which the target does not have."""
    for roots, inner in ((plan.head, COPY), (plan.targets, BASE)):
        root = next((r for r in roots if _under(name, [r])), None)
        if root is not None:
            rest = name[len(root):]
            return root + rest[len(inner):] if rest.startswith(inner + ".") else None
    return name
