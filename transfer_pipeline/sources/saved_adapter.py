"""`source.adapter`: a saved adapter's folder read (peft's format), no tensor data: what tuning/adapter_reuse.py puts on.

The folder holds adapter_config.json and adapter_model.safetensors (a run's adapter/, or peft's
save_pretrained). Read here: the method (peft_type, and use_dora / use_rslora for LORA), rank,
alpha and dropout (each peft type names them its own way: `SAVED_TYPES`); the layers the tensors
belong to (the targets, from the file's `lora_*` / `hada_*` / `lokr_*` names) and the modules saved whole
(`modules_to_save`, our head); every tensor's shape from the checked header; the file's sha256.
The paths get source.path's checks (files.check_path); settings the injection would not
reproduce are refused.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError

WHERE = "source.adapter"
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
FILE_PREFIX = "base_model.model."  # peft's save_pretrained names: base_model.model.<module>.lora_A.weight
CONFIG_MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class SavedType:
    """How adapter_config.json of one peft_type names alpha and dropout, its tensors' names after the module
    (`tensors`, a regex; `shown` for messages), and the settings the injection does not reproduce (accepted
    only at peft's defaults)."""

    alpha: str
    dropout: str
    tensors: str
    shown: str
    not_reproduced: dict[str, Any]


_PATTERNS = {"rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None}
_LYCORIS = {**_PATTERNS, "module_dropout": 0.0, "use_effective_conv2d": False}
SAVED_TYPES = {
    "LORA": SavedType("lora_alpha", "lora_dropout", r"lora_(?:A|B|embedding_A|embedding_B|magnitude_vector)",
                      "lora_A / lora_B / lora_magnitude_vector",
                      {**_PATTERNS, "bias": "none", "lora_bias": False, "fan_in_fan_out": False,
                       "layer_replication": None, "target_parameters": None, "trainable_token_indices": None,
                       "use_qalora": False}),
    "LOHA": SavedType("alpha", "rank_dropout", r"hada_(?:w1_a|w1_b|w2_a|w2_b)", "hada_w1_a / ... / hada_w2_b",
                      _LYCORIS),
    "LOKR": SavedType("alpha", "rank_dropout", r"lokr_(?:w1|w1_a|w1_b|w2|w2_a|w2_b)", "lokr_w1 / lokr_w2 (_a / _b)",
                      {**_LYCORIS, "decompose_both": False, "decompose_factor": -1, "rank_dropout_scale": False}),
}
METHOD_OF = {"LOHA": "loha", "LOKR": "lokr"}  # LORA: lora, dora (use_dora) or rslora (use_rslora)


def _method(cfg: dict[str, Any], path: Path) -> str:
    """adapters.method for a saved config; another peft type, or DoRA with rsLoRA, is refused by name."""
    kind = cfg.get("peft_type")
    if kind not in SAVED_TYPES:
        raise UserError(f"{WHERE}: {path} is a {kind!r} adapter (peft_type); the adapters put on are LoRA, DoRA and "
                        "rsLoRA (peft_type LORA), LoHa (LOHA) and LoKr (LOKR).")
    if kind != "LORA":
        return METHOD_OF[kind]
    if cfg.get("use_dora") and cfg.get("use_rslora"):
        raise UserError(f"{WHERE}: {path} sets both use_dora and use_rslora; this pipeline's adapters put on DoRA "
                        "or rsLoRA, not both, yet: the adapter would not act as it was trained.")
    return "dora" if cfg.get("use_dora") else "rslora" if cfg.get("use_rslora") else "lora"


@dataclass
class SavedAdapter:
    """A saved adapter as read from its folder (no tensor data yet)."""

    folder: Path
    method: str  # lora | dora | rslora | loha | lokr
    rank: int
    alpha: float
    dropout: float
    targets: list[str]  # the modules its adapter tensors belong to, in the file's order
    head: list[str]  # modules saved whole (peft modules_to_save)
    shapes: dict[str, tuple[int, ...]]  # the file's tensor names -> shapes
    sha256: str  # of adapter_model.safetensors
    bytes: int
    prefix: str = FILE_PREFIX  # of every tensor name in the file

    @property
    def weights(self) -> Path:
        return self.folder / WEIGHTS

    def describe(self) -> str:
        return f"{self.method} rank {self.rank} alpha {self.alpha:g} on {', '.join(self.targets)}"

    def to_dict(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "sha256": self.sha256, "bytes": self.bytes, "method": self.method,
                "rank": self.rank, "alpha": self.alpha, "targets": list(self.targets), "head": list(self.head)}


def _config(path: Path) -> dict[str, Any]:
    if path.stat().st_size > CONFIG_MAX_BYTES:
        raise UserError(f"{WHERE}: {path} is {path.stat().st_size:,} bytes; an adapter_config.json is a few KB "
                        f"(at most {CONFIG_MAX_BYTES:,} read).")
    try:
        cfg = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{WHERE}: {path} is not JSON ({type(e).__name__}: {str(e)[:120]}); a saved adapter's "
                        "adapter_config.json is written by peft's save_pretrained.") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{WHERE}: {path} holds a JSON {type(cfg).__name__}, not peft's adapter config (an object).")
    _method(cfg, path)
    kind = SAVED_TYPES[cfg["peft_type"]]
    r, alpha, dropout = cfg.get("r"), cfg.get(kind.alpha), cfg.get(kind.dropout, 0.0)
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise UserError(f"{WHERE}: {path} has r={r!r}; the rank is a whole number >= 1.")
    for key, value, low in ((kind.alpha, alpha, 0.0), (kind.dropout, dropout, None)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or (low is not None and value <= low) \
                or (low is None and not 0 <= value < 1):
            raise UserError(f"{WHERE}: {path} has {key}={value!r}, not a number "
                            f"{'> 0' if low is not None else 'in [0, 1)'}.")
    for key, default in kind.not_reproduced.items():
        if cfg.get(key) not in (default, None):
            raise UserError(f"{WHERE}: {path} sets {key}={cfg[key]!r}, which this pipeline's adapters do not put on "
                            f"(only {key}={default!r}) yet; the adapter would not act as it was trained.")
    saved = cfg.get("modules_to_save") or []
    if not isinstance(saved, list) or not all(isinstance(m, str) and m for m in saved):
        raise UserError(f"{WHERE}: {path} has modules_to_save={saved!r}, not a list of module names.")
    return cfg


def read_saved(spec: str) -> SavedAdapter:
    """The folder `source.adapter` names, checked as source.path is (files.check_path), its config and header read."""
    from ..files import check_path, resolve_path
    from .safetensors_header import read_header

    folder = resolve_path(spec, WHERE)
    check_path(folder, WHERE, "dir", spec)
    present = {p.name for p in folder.iterdir()}
    for name in (CONFIG, WEIGHTS):
        if name not in present:
            inner = [d for d in ("adapter",) if (folder / d / name).is_file()]
            hint = (f" {folder / inner[0]} has one: source.adapter={folder / inner[0]}" if inner else
                    " (peft's older adapter_model.bin is not read: save it again with safe_serialization=True)"
                    if name == WEIGHTS and "adapter_model.bin" in present else "")
            raise UserError(f"{WHERE}: {folder} has no {name}; a saved adapter is a folder with {CONFIG} and {WEIGHTS} "
                            f"(a run's adapter/, or peft's save_pretrained).{hint}")
        check_path(folder / name, WHERE, "file")
    cfg = _config(folder / CONFIG)
    weights = folder / WEIGHTS
    header, _ = read_header(weights, WHERE)
    shapes: dict[str, tuple[int, ...]] = {}
    targets: list[str] = []
    head = list(cfg.get("modules_to_save") or [])
    method, kind = _method(cfg, folder / CONFIG), SAVED_TYPES[cfg["peft_type"]]
    adapter_tensor = re.compile(rf"^(?P<module>.+?)\.{kind.tensors}(?:\.|$)")
    for name, entry in header.items():
        if not name.startswith(FILE_PREFIX):
            raise UserError(f"{WHERE}: {weights} holds {name!r}, not a name peft's save_pretrained writes "
                            f"({FILE_PREFIX}<module>...); it is not a peft adapter file.")
        inner = name[len(FILE_PREFIX):]
        shapes[name] = tuple(entry["shape"])
        hit = adapter_tensor.match(inner)
        if hit:
            if hit["module"] not in targets:
                targets.append(hit["module"])
        elif not any(inner.startswith(m + ".") for m in head):
            raise UserError(f"{WHERE}: {weights} holds {inner!r}, neither a {method} adapter's tensor "
                            f"({kind.shown}) nor in modules_to_save ({head or 'none'} in {CONFIG}).")
    if not targets:
        raise UserError(f"{WHERE}: {weights} holds no {method} adapter tensors ({kind.shown}); nothing to put on.")
    data = weights.read_bytes()
    return SavedAdapter(folder, method, cfg["r"], float(cfg[kind.alpha]),
                        float(cfg.get(kind.dropout) or 0.0), targets, head, shapes, hashlib.sha256(data).hexdigest(),
                        len(data))
