"""`adapters`: LoRA-family adapters (Hugging Face peft) on a frozen base; off (`adapters=none`) by default."""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, List, Optional

from .checks import check_count, check_number
from ..errors import UserError


class AdapterMethod(Enum):
    lora = "lora"  # low-rank updates B @ A added to the frozen weight (peft LoraConfig)
    dora = "dora"  # LoRA plus a trained magnitude per output (peft LoraConfig(use_dora=True))
    rslora = "rslora"  # LoRA scaled by alpha / sqrt(rank) instead of alpha / rank (peft LoraConfig(use_rslora=True))
    loha = "loha"  # a Hadamard product of two low-rank updates (peft LoHaConfig); no Embedding layers
    lokr = "lokr"  # a Kronecker product of two small factors (peft LoKrConfig); no Embedding layers


@dataclass
class AdaptersConfig:
    method: Optional[AdapterMethod] = None  # lora | dora | rslora | loha | lokr; null = no adapters (adapters=none)
    targets: Optional[List[str]] = None  # selectors of the layers that get adapters; null = every Linear/Conv but @head
    rank: int = 8  # the rank r of each update
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # dropout on the adapters' input while training, in [0, 1)
    lr: Optional[float] = None  # the adapters' own parameter group LR; null = optim.lr

    def __post_init__(self) -> None:
        if self.method is None:  # off: a value set here would do nothing, which is a mistake worth saying
            changed = [f.name for f in fields(self) if f.name != "method" and getattr(self, f.name) != f.default]
            if changed:
                raise UserError(f"adapters.{changed[0]} is set but adapters are off (adapters=none); turn them on "
                                "with adapters=lora (or adapters=dora).")
            return
        check_count("adapters.rank", self.rank, 1, want="a whole number >= 1 (the rank of each update, e.g. 8)")
        check_number("adapters.alpha", self.alpha, 0, low_open=True, want="a finite number > 0 (e.g. 2 x rank)")
        check_number("adapters.dropout", self.dropout, 0, 1, high_open=True)
        if self.lr is not None:
            check_number("adapters.lr", self.lr, 0, low_open=True, want="a finite number > 0 (null: optim.lr)")
        if self.targets is not None:
            if not self.targets or not all(isinstance(t, str) and t.strip() for t in self.targets):
                raise UserError(f"adapters.targets={self.targets!r}: a non-empty list of selectors (e.g. "
                                "['block1', 'block2']), or null for every Linear/Conv layer but @head.")

    @property
    def enabled(self) -> bool:
        return self.method is not None


def refuse_unsupported(cfg: Any) -> None:
    """What adapters do not work with yet (a RunConfig): refused before anything runs, one message naming the key."""
    saved = cfg.source.adapter
    if not cfg.adapters.enabled:
        return
    t, mode = cfg.trainer, cfg.mode.value
    merged = "a trained run's model.safetensors has the adapters merged in: use it with adapters=none"
    if mode in ("eval", "export", "predict") and saved is None:  # fresh adapters: the untrained base, said plainly
        raise UserError(f"mode={mode} with adapters (adapters.method={cfg.adapters.method.value}) needs the trained "
                        "adapter: source.adapter=<run>/adapter (the base as source.path says, the adapter put on); or "
                        f"{merged} (source.path=<run>/model.safetensors mapping=default).")
    refused = [
        (t.cache_features, "trainer.cache_features", "the adapters change the backbone's features as they train"),
        (cfg.freeze.bn.value == "train", "freeze.bn=train", "the base's BatchNorm statistics stay as loaded; use "
                                                             "freeze.bn=auto"),
    ]
    for hit, key, hint in refused:
        if hit:
            raise UserError(f"{key} with adapters (adapters.method={cfg.adapters.method.value}) is not supported yet: "
                            f"{hint}.")
