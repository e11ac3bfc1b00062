"""`adapters.method` -> peft's config: one small builder per method, and the layer kinds each one takes.

Every method goes in the same way (tuning/adapters.py `inject`): on exactly the planned module names
(`exact_pattern`), the head as peft's `modules_to_save`, merged by `merge_and_unload`, saved by
`save_pretrained`. What differs is the peft config and which keys carry rank, alpha and dropout:

| method | peft | scaling | `adapters.dropout` is | layers |
| --- | --- | --- | --- | --- |
| lora | LoraConfig | alpha / rank | lora_dropout (on the adapter's input) | Linear, Conv1d, Conv2d, Embedding |
| dora | LoraConfig(use_dora=True) | alpha / rank | lora_dropout | the same |
| rslora | LoraConfig(use_rslora=True) | alpha / sqrt(rank) | lora_dropout | the same |
| loha | LoHaConfig | alpha / rank | rank_dropout (on the update's rows) | Linear, Conv1d, Conv2d |
| lokr | LoKrConfig | alpha / rank | rank_dropout | Linear, Conv1d, Conv2d |

A saved adapter's adapter_config.json is read back by sources/saved_adapter.py (its own table:
sources may not import tuning).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import UserError
from .adapters import exact_pattern

LORA_KINDS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)
LYCORIS_KINDS = (nn.Linear, nn.Conv1d, nn.Conv2d)  # peft's LoHa / LoKr layers: no Embedding


def _lora(plan: Any, common: dict[str, Any], **flags: bool) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=plan.rank, lora_alpha=plan.alpha, lora_dropout=plan.dropout, bias="none", **flags, **common)


def _loha(plan: Any, common: dict[str, Any]) -> Any:
    from peft import LoHaConfig

    return LoHaConfig(r=plan.rank, alpha=plan.alpha, rank_dropout=plan.dropout, **common)


def _lokr(plan: Any, common: dict[str, Any]) -> Any:
    from peft import LoKrConfig

    return LoKrConfig(r=plan.rank, alpha=plan.alpha, rank_dropout=plan.dropout, **common)


# method -> (builder, the layer kinds it takes)
METHODS: dict[str, tuple[Callable[..., Any], tuple[type[nn.Module], ...]]] = {
    "lora": (_lora, LORA_KINDS),
    "dora": (lambda plan, common: _lora(plan, common, use_dora=True), LORA_KINDS),
    "rslora": (lambda plan, common: _lora(plan, common, use_rslora=True), LORA_KINDS),
    "loha": (_loha, LYCORIS_KINDS),
    "lokr": (_lokr, LYCORIS_KINDS),
}


def peft_config(model: nn.Module, plan: Any) -> Any:
    """The peft config that puts `plan`'s method on exactly `plan.targets`, with `plan.head` as modules_to_save.

    A target of a kind the method has no layer for is an error naming it (peft's own message would
    name neither the key nor the fix)."""
    build, kinds = METHODS[plan.method]
    for t in plan.targets:
        layer = model.get_submodule(t)
        if not isinstance(layer, kinds):
            names = ", ".join(k.__name__ for k in kinds)
            raise UserError(f"adapters.targets: {t!r} is a {type(layer).__name__}, and adapters.method={plan.method} "
                            f"goes on {names} layers only; drop it from adapters.targets, or use adapters=lora "
                            "(lora, dora and rslora take Embedding layers too).")
    return build(plan, {"target_modules": exact_pattern(plan.targets), "modules_to_save": list(plan.head) or None})
