"""Read the source weights: a checkpoint file or folder, a model built in memory, or torchvision weights.

Whatever the format, the result is a `SourceWeights`: names and shapes up front (all the plan
needs) and a getter that reads one tensor when loading asks for it. safetensors files are read
lazily through their header; torch files are memory-mapped where the format allows.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import UserError, did_you_mean
from .mapping import TensorMeta, _score, detect_prefix
from .schema import SourceConfig

# Nested checkpoint keys, in the order preferred when two fit the target equally well.
NESTED_KEYS = ("state_dict", "model", "module", "model_ema", "ema", "params", "net", "weights")
SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                      "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


@dataclass
class SourceWeights:
    description: str  # shown in the report: 'file x.safetensors', 'model torchvision.models.resnet18' ...
    meta: dict[str, TensorMeta]
    get: Callable[[str], Any]  # name -> torch.Tensor
    path: Path | None = None
    notes: list[str] = field(default_factory=list)  # e.g. "picked nested key 'state_dict'"


def resolve_path(path: str) -> Path:
    """A filesystem path, or `pkg://package/relative/path` for files that ship inside a package."""
    if path.startswith("pkg://"):
        package, _, rel = path[len("pkg://"):].partition("/")
        try:
            return Path(str(resources.files(package).joinpath(rel)))
        except ModuleNotFoundError:
            raise UserError(f"source.path: {path!r} names package {package!r}, which is not installed.") from None
    return Path(path).expanduser()


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _from_state_dict(sd: Mapping[str, Any], description: str, path: Path | None = None,
                     notes: list[str] | None = None) -> SourceWeights:
    meta = {k: TensorMeta(tuple(v.shape), _dtype_name(v.dtype)) for k, v in sd.items()}
    return SourceWeights(description, meta, sd.__getitem__, path, notes or [])


def _is_tensor_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _candidates(obj: Any, trust_pickle: bool, keypath: str = "", depth: int = 0) -> list[tuple[str, dict]]:
    """Every {name: tensor} dict inside a loaded checkpoint, with the key path that leads to it."""
    import torch
    from torch import nn

    if isinstance(obj, nn.Module):
        return [(keypath, obj.state_dict())]
    if not isinstance(obj, Mapping) or depth > 2:
        return []
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    found = [(keypath, tensors)] if tensors else []
    for k, v in obj.items():
        if isinstance(v, (Mapping, nn.Module)):
            found += _candidates(v, trust_pickle, f"{keypath}.{k}" if keypath else str(k), depth + 1)
    return found


def pick_nested(obj: Any, key: str, target: Mapping[str, TensorMeta], where: Path,
                trust_pickle: bool) -> tuple[dict, str]:
    """The state dict inside a checkpoint: `key` if given, else the candidate that fits the target best."""
    found = _candidates(obj, trust_pickle)
    if not found:
        kind = type(obj).__name__
        keys = f" (keys: {', '.join(map(str, list(obj)[:10]))})" if isinstance(obj, Mapping) else ""
        raise UserError(f"source.path: {where} holds a {kind}{keys} with no tensors in it; "
                        "expected a state dict or a dict that nests one.")
    if key != "auto":
        for kp, sd in found:
            if kp == key:
                return sd, kp
        raise UserError(f"source.key={key!r}: {where} has no such nested key. Keys holding tensors: "
                        f"{', '.join(repr(kp or '<top level>') for kp, _ in found)}.")

    def fit(item: tuple[str, dict]) -> tuple[int, int, int]:
        kp, sd = item
        meta = {k: TensorMeta(tuple(v.shape)) for k, v in sd.items()}
        prefix = detect_prefix(meta, target)
        hits = _score(list(meta), meta, target, [], [n.removeprefix(prefix) for n in meta])
        last = kp.rsplit(".", 1)[-1]
        pref = -NESTED_KEYS.index(last) if last in NESTED_KEYS else -len(NESTED_KEYS)
        return hits, pref, len(sd)

    best = max(found, key=fit)
    return best[1], best[0]


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    import torch

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        if "weights_only" not in str(e) and "Weights only" not in str(e):
            raise UserError(f"source.path: {path} is not a readable PyTorch checkpoint ({e}). "
                            "Is the file truncated or of another format?") from None
        if not trust_pickle:
            raise UserError(f"source.path: {path} holds pickled Python objects (a full nn.Module or custom "
                            "classes), which can run arbitrary code when loaded, so it was refused "
                            "(torch.load weights_only=True). If you trust this file, set "
                            "source.trust_pickle=true; better, re-save it as a state dict or safetensors.") from None
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"source.path: cannot read {path} as a PyTorch checkpoint ({type(e).__name__}: {e}). "
                        "Is the file truncated or corrupt?") from None


def _read_safetensors(path: Path) -> SourceWeights:
    from safetensors import SafetensorError, safe_open

    try:
        f = safe_open(str(path), framework="pt", device="cpu")
        meta = {}
        for name in f.keys():
            sl = f.get_slice(name)
            meta[name] = TensorMeta(tuple(sl.get_shape()), SAFETENSORS_DTYPES.get(sl.get_dtype(), sl.get_dtype().lower()))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"source.path: cannot read {path} as safetensors ({e}). Is the file truncated or corrupt?") from None
    return SourceWeights(f"file {path}", meta, f.get_tensor, path)


def _read_sharded(index: Path, trust_pickle: bool, target: Mapping[str, TensorMeta]) -> SourceWeights:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, OSError) as e:
        raise UserError(f"source.path: {index} is not a shard index with a 'weight_map' ({e}).") from None
    shards: dict[str, SourceWeights] = {}
    for shard in dict.fromkeys(weight_map.values()):
        p = index.parent / shard
        if not p.is_file():
            raise UserError(f"source.path: {index} names shard {shard!r}, which is missing from {index.parent}.")
        shards[shard] = _read_file(p, "auto", trust_pickle, target)
    meta = {n: shards[s].meta[n] for n, s in weight_map.items()}
    return SourceWeights(f"sharded checkpoint {index} ({len(shards)} shards)", meta,
                         lambda n: shards[weight_map[n]].get(n), index)


def _read_folder(folder: Path, key: str, trust_pickle: bool, target: Mapping[str, TensorMeta]) -> SourceWeights:
    for name in ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin"):
        if (folder / name).is_file():
            return _read_file(folder / name, key, trust_pickle, target)
    files = sorted(p.name for p in folder.iterdir())[:10]
    raise UserError(f"source.path: folder {folder} has no model.safetensors, pytorch_model.bin or shard index "
                    f"(it has: {', '.join(files) or 'nothing'}). Point source.path at the checkpoint file.")


def _read_file(path: Path, key: str, trust_pickle: bool, target: Mapping[str, TensorMeta]) -> SourceWeights:
    if path.name.endswith(".index.json"):
        return _read_sharded(path, trust_pickle, target)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    obj = _torch_load(path, trust_pickle)
    sd, keypath = pick_nested(obj, key, target, path, trust_pickle)
    notes = [f"weights under nested key {keypath!r}"] if keypath else []
    return _from_state_dict(sd, f"file {path}", path, notes)


def _read_torchvision_weights(name: str) -> SourceWeights:
    import torch
    from torchvision.models import get_weight

    short = name.removeprefix("torchvision.models.")
    try:
        weights = get_weight(short)
    except (ValueError, KeyError, AttributeError) as e:
        raise UserError(f"source.weights: {name!r} is not a torchvision weights enum ({e}). "
                        "Write it like ResNet18_Weights.IMAGENET1K_V1.") from None
    try:
        sd = weights.get_state_dict(progress=False, check_hash=False)
    except OSError as e:  # URLError is an OSError: no internet and nothing cached
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise UserError(f"source.weights: cannot download {weights.url} ({e}). Without internet, put the file "
                        f"at {cache} (the torch hub cache; TORCH_HOME moves it).") from None
    return _from_state_dict(sd, f"torchvision weights {short}")


def read_source(cfg: SourceConfig, target: Mapping[str, TensorMeta]) -> SourceWeights | None:
    """The source named by the config, or None for 'architecture only'."""
    given = [k for k in ("path", "model", "weights") if getattr(cfg, k) is not None]
    if len(given) > 1:
        raise UserError(f"source: set only one of source.path, source.model, source.weights (got {', '.join(given)}).")
    if not given:
        return None
    if cfg.model is not None:
        from .build import build_model

        model = build_model(cfg.model, "source.model")
        return _from_state_dict(model.state_dict(), f"model {cfg.model['_target_']}")
    if cfg.weights is not None:
        return _read_torchvision_weights(cfg.weights)
    path = resolve_path(cfg.path)
    if not path.exists():
        near = [p.name for p in path.parent.iterdir()] if path.parent.is_dir() else []
        raise UserError(f"source.path: no such file: {path.resolve()}.{did_you_mean(path.name, near)}")
    if path.is_dir():
        return _read_folder(path, cfg.key, cfg.trust_pickle, target)
    return _read_file(path, cfg.key, cfg.trust_pickle, target)
