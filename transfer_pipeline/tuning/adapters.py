"""`adapters`: LoRA / DoRA on a frozen base, through Hugging Face peft driven by resolved module names.

`plan_adapters` reads the built, loaded target: `adapters.targets` (selectors, `@head` / `@blocks`
already expanded) become exact module names of layers peft supports; `inject` hands exactly those
names to peft. The model is adapted in place (`peft.get_peft_model` wraps it, and the wrapper's
`base_model.model` is our model object), so the rest of the pipeline keeps working on our model
with its own names: a target `block1.0` now holds `block1.0.base_layer.weight` (the frozen base
weight) and `block1.0.lora_A.default.weight` / `lora_B` (the adapter); the head, which trains in
full, is peft's `modules_to_save` (`head.modules_to_save.default.*`, with a frozen copy of the
loaded head in `head.original_module.*`). adapter_export.py merges and writes.

peft is imported only here, and only when adapters are on.
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
from ..schema import AdaptersConfig, FreezeConfig, OptimConfig
from ..selectors import check_selector, matches, select
from .batchnorm import effective_bn_mode, bn_modules, frozen_bn_params, resolve_bn_modes
from .freezing import FreezePlan, initial_trainable
from .param_groups import DEFAULT, GroupSpec

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
    head: list[str]  # modules that train in full and are saved with the adapter (peft modules_to_save)
    base_keys: list[str]  # the base's state_dict keys: what the merged model.safetensors must hold, in this order
    base_params: int  # parameters of the base (the head counted once)
    adapter_params: int = 0  # filled in by inject
    head_params: int = 0
    adapter_names: list[str] = field(default_factory=list)  # the adapter parameters' names in the adapted model

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
        text = (f"Adapters: {self.method}, rank {self.rank}, alpha {self.alpha:g}, dropout {self.dropout:g}, "
                f"on {len(self.targets)} layer(s) ({kinds}): {shown}\n  trains in full and is saved with the "
                f"adapter: {head}; the rest of the base is frozen")
        if self.adapter_params:
            text += (f"\n  trainable {self.trainable_params:,} of {self.base_params + self.adapter_params:,} "
                     f"parameters ({100 * self.trainable_fraction:.2f}%): adapters {self.adapter_params:,}, "
                     f"head {self.head_params:,}")
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "targets": list(self.targets), "rank": self.rank, "alpha": self.alpha,
                "dropout": self.dropout, "head": list(self.head), "adapter_params": self.adapter_params,
                "trainable_params": self.trainable_params, "trainable_fraction": self.trainable_fraction}


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
    if isinstance(parent, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):  # the fused inference path
        return (f"a layer of an nn.{type(parent).__name__}, whose fused inference path (eval, no grad) reads its "
                "weight directly, so the adapter would be left out of evaluation")
    return None


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
                            f"({', '.join(head) or 'none'}) and freeze.frozen; name the layers that get adapters in "
                            f"{where}.")
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


def plan_adapters(model: nn.Module, cfg: AdaptersConfig, targets: Sequence[str] | None, freeze: FreezeConfig,
                  head: Sequence[str]) -> AdapterPlan:
    """The loaded base + `adapters` + `freeze` (selectors expanded) -> what gets adapters and what trains in full.

    With adapters the base trains only its head in full (what `freeze` leaves trainable, which must be
    all of @head or nothing); `freeze.frozen` layers get no adapter.
    """
    names = [n for n, _ in model.named_parameters()]
    modes = resolve_bn_modes(model, freeze)
    base_trainable = initial_trainable(names, freeze, frozen_bn_params(model, modes))
    head_params = [n for n in names if _under(n, head)]
    outside = [n for n in names if n in base_trainable and n not in head_params]
    if outside:
        raise UserError(f"freeze: with adapters the base trains only its head (@head = {', '.join(head) or 'none'}) in "
                        f"full, and this freeze config also trains {outside[0]!r}"
                        f"{f' (+{len(outside) - 1} more)' if len(outside) > 1 else ''}; training base layers in full "
                        "beside adapters is not supported yet with adapters. Use freeze=adapters (freeze.trainable: "
                        "[\"@head\"]), or give those layers adapters (adapters.targets).")
    trained_head = [n for n in head_params if n in base_trainable]
    if trained_head and len(trained_head) != len(head_params):
        raise UserError(f"freeze: trains part of the head ({trained_head[0]!r}) but not all of it "
                        f"({next(n for n in head_params if n not in base_trainable)!r}); with adapters the head trains "
                        "in full or not at all (it is saved with the adapter as a whole). Not supported yet with adapters.")
    full = list(head) if trained_head else []
    frozen_layers = [t for t, m in _layers(model).items()
                     if any(matches(sel, join_name(t, p)) for sel in freeze.frozen for p, _ in m.named_parameters(recurse=False))]
    chosen = resolve_targets(model, targets, head, skip=frozen_layers)
    for t in chosen:
        if _under(t, full):
            raise UserError(f"adapters.targets: {t!r} is in the head (@head = {', '.join(head)}), which trains in full "
                            "(freeze.trainable); a layer gets an adapter or trains in full, not both. Drop it from "
                            "adapters.targets, or freeze the head (freeze.trainable=[]).")
    for i, sel in enumerate(freeze.frozen):
        for t in chosen:
            if any(matches(sel, join_name(t, p)) for p, _ in model.get_submodule(t).named_parameters(recurse=False)):
                raise UserError(f"adapters.targets: {t!r} is also selected by freeze.frozen[{i}]={sel!r}; a frozen layer "
                                "gets no adapter. Drop it from one of them.")
    layers = dict(model.named_modules())
    return AdapterPlan(cfg.method.value, cfg.rank, float(cfg.alpha), float(cfg.dropout), cfg.lr, chosen,
                       dict(Counter(type(layers[t]).__name__ for t in chosen)), full, list(model.state_dict()),
                       sum(p.numel() for p in model.parameters()))


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
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import ModulesToSaveWrapper

    config = LoraConfig(r=plan.rank, lora_alpha=plan.alpha, lora_dropout=plan.dropout,
                        use_dora=plan.method == "dora", target_modules=exact_pattern(plan.targets),
                        modules_to_save=list(plan.head) or None, bias="none")
    try:
        peft_model = get_peft_model(model, config)
    except (ValueError, TypeError, NotImplementedError) as e:
        raise UserError(f"adapters ({plan.method}): peft cannot put adapters on {', '.join(plan.targets[:5])}: "
                        f"{str(e).splitlines()[0][:300]}") from None
    assert peft_model.base_model.model is model  # adapted in place: our names, our object
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
    plan.head_params = sum(params[n].numel() for n in trains_head)
    return peft_model


# --- freezing and groups on the adapted model ---------------------------------------------------------------

def adapter_freeze_plan(model: nn.Module, freeze: FreezeConfig, plan: AdapterPlan) -> FreezePlan:
    """What trains: the adapters and the head's copy (as peft set them); no events; BN statistics of the base fixed."""
    names = [n for n, _ in model.named_parameters()]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    modes = resolve_bn_modes(model, freeze)
    layers = bn_modules(model)
    moving = [n for n, mode in modes.items() if not _under(n, plan.head) and effective_bn_mode(layers[n], mode) == "train"]
    if moving:
        raise UserError(f"freeze.bn: BatchNorm layer {moving[0]!r} of the base would update its statistics while training "
                        "(freeze.bn=train, a train override, or a layer without affine parameters under bn=auto); with "
                        "adapters the base stays as loaded, and this is not supported yet with adapters. Use "
                        "freeze.bn=auto (or frozen).")
    return FreezePlan(names, trainable, [], modes, frozen_bn_params(model, modes), [])


def adapter_groups(model: nn.Module, plan: AdapterPlan, optim: OptimConfig, no_decay: set[str]) -> list[GroupSpec]:
    """`adapters` (adapters.lr, default optim.lr) and `default` (the head and the frozen base, optim.lr)."""
    names = [n for n, _ in model.named_parameters()]
    own = set(plan.adapter_names)
    groups = [GroupSpec(ADAPTER_GROUP, ("adapters.targets",), [n for n in names if n in own],
                        lr=plan.lr if plan.lr is not None else optim.lr, weight_decay=optim.weight_decay,
                        origin="adapters.lr"),
              GroupSpec(DEFAULT, ("*",), [n for n in names if n not in own], optim.lr, optim.weight_decay)]
    for g in groups:
        g.no_decay = frozenset(n for n in g.names if n in no_decay)
    return groups


def head_copies(model: nn.Module) -> set[str]:
    """Parameters of peft's frozen copies of the head (not used by the forward, not part of the base's count)."""
    return {n for n, _ in model.named_parameters() if HEAD_COPY in f".{n}"}

