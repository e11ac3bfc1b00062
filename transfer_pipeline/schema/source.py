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
    # checkpoint file or folder, pkg://package/file, hf://org/name[@revision][/file or folder] or timm://name.tag
    # (read from the Hugging Face hub cache: docs/sources.md); null = no weights (architecture only)
    path: Optional[str] = None
    key: str = "auto"  # nested dict key holding the weights ('state_dict', 'model', 'ema' ...)
    trust_pickle: bool = False  # allow full pickled nn.Module files (runs code from the file)
    model: Any = None  # a `_target_` node: the source is this model, built in memory (typed Any: settable on the CLI)
    weights: Optional[str] = None  # torchvision weights enum, e.g. ResNet18_Weights.IMAGENET1K_V1
    strip_prefixes: Optional[List[str]] = None  # cut from source names; null = detect ('module.' ...); [] = none
    add_prefix: Optional[str] = None  # put in front of source names (after stripping); null = detect
    meta_init: bool = True  # build the target on the meta device and assign loaded tensors (fast); false = build normally
    allow_nonfinite: bool = False  # load NaN / inf weights (e.g. to inspect a broken checkpoint); else an error
    allow_lossy_cast: bool = False  # load bool/int/complex into float (or the reverse), or floats that overflow the target
    # a saved adapter (a folder with adapter_config.json + adapter_model.safetensors: a run's adapter/, or peft's
    # save_pretrained) put onto the loaded base: to evaluate, predict, export merged, or train on (docs/adapters.md)
    adapter: Optional[str] = None


@dataclass
class ExpectConfig:
    missing: Optional[List[str]] = None  # selectors: exactly what may stay unloaded
    min_loaded: float = 0.0  # loaded target elements / all target elements

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_loaded) and 0.0 <= self.min_loaded <= 1.0):
            raise UserError(f"mapping.expect.min_loaded={self.min_loaded}: a fraction of the target's elements, "
                            "in [0, 1].")


@dataclass
class VerifyConfig:
    """`mapping.verify`: prove a load numerically (mapping/verify.py)."""

    enabled: bool = False  # run source and target on the same input and compare (export: every tensor too)
    input_shape: Optional[List[int]] = None  # e.g. [2, 3, 224, 224]; null = a batch of the configured data
    source_model: Any = None  # a `_target_` of the checkpoint's own architecture (its class)
    source_output: Optional[Any] = None  # where the source model's logits are (as model.output): an index or a name
    atol: float = 1e-5  # outputs agree when |a - b| <= atol + rtol * |b| everywhere
    rtol: float = 1e-4  # relative tolerance (see atol)
    seed: int = 0  # the random input's seed

    def __post_init__(self) -> None:
        if self.source_output is not None and (isinstance(self.source_output, bool)
                                               or not isinstance(self.source_output, (int, str))):
            raise UserError(f"mapping.verify.source_output={self.source_output!r}: a tuple index (e.g. 0) or a dict key "
                            "/ attribute name (e.g. logits); null when the source model returns a tensor.")
        for key in ("atol", "rtol"):
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) >= 0):
                raise UserError(f"mapping.verify.{key}={getattr(self, key)}: a finite tolerance >= 0.")
        if self.input_shape is not None:
            shape = list(self.input_shape)
            if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 65536 for d in shape) \
                    or math.prod(shape) > 2**28:
                raise UserError(f"mapping.verify.input_shape={shape}: whole sizes >= 1, e.g. [2, 3, 224, 224] (a "
                                "batch of 2), at most 2**28 elements.")


@dataclass
class MappingConfig:
    rules: List[Dict[str, Any]] = field(default_factory=list)  # source -> target names: [{from: regex, to: template}]
    on_mismatch: OnMismatch = OnMismatch.error  # a tensor of another shape: error, or skip (left as initialised)
    exclude: List[str] = field(default_factory=list)  # target selectors never loaded (a new head)
    expect: ExpectConfig = field(default_factory=ExpectConfig)
    auto: Optional[AutoAlign] = None  # shape_order: align tensors that names leave unmatched (off: null)
    suggest: Optional[bool] = None  # propose rules for what names leave unmatched; null = in mode=plan
    rules_file: Optional[str] = None  # a YAML file of rules (e.g. a run's suggested_rules.yaml), after `rules`
    verify: VerifyConfig = field(default_factory=VerifyConfig)
