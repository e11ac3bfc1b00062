"""`source` and `mapping`: where the weights come from and how their names meet the target's."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from ..errors import UserError


class OnMismatch(Enum):
    error = "error"
    skip = "skip"


class AutoAlign(Enum):
    shape_order = "shape_order"  # pair what names leave unmatched by module order and shape


@dataclass
class SourceConfig:
    path: Optional[str] = None  # checkpoint file; null = no weights (architecture only)
    key: str = "auto"  # nested dict key holding the weights ('state_dict', 'model', 'ema' ...)
    trust_pickle: bool = False  # allow full pickled nn.Module files (runs code from the file)
    model: Optional[Dict[str, Any]] = None  # a `_target_` node: build a source model in memory
    weights: Optional[str] = None  # torchvision weights enum, e.g. ResNet18_Weights.IMAGENET1K_V1
    strip_prefixes: Optional[List[str]] = None  # null = detect ('module.', '_orig_mod.' ...); [] = none
    add_prefix: Optional[str] = None  # put in front of source names (after stripping); null = detect
    meta_init: bool = True  # build the target on the meta device and assign loaded tensors (fast); false = build normally
    allow_nonfinite: bool = False  # load NaN / inf weights (e.g. to inspect a broken checkpoint); else an error
    allow_lossy_cast: bool = False  # load bool/int/complex into float (or the reverse), or floats that overflow the target


@dataclass
class ExpectConfig:
    missing: Optional[List[str]] = None  # selectors: exactly what may stay unloaded
    min_loaded: float = 0.0  # loaded target elements / all target elements

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_loaded) and 0.0 <= self.min_loaded <= 1.0):
            raise UserError(f"mapping.expect.min_loaded={self.min_loaded}: a fraction of the target's elements, "
                            "in [0, 1].")


@dataclass
class MappingConfig:
    rules: List[Dict[str, Any]] = field(default_factory=list)  # [{from: regex, to: template, op: ..., ...}]
    on_mismatch: OnMismatch = OnMismatch.error
    exclude: List[str] = field(default_factory=list)  # target selectors never loaded (a new head)
    expect: ExpectConfig = field(default_factory=ExpectConfig)
    auto: Optional[AutoAlign] = None  # shape_order: align tensors that names leave unmatched (off: null)
