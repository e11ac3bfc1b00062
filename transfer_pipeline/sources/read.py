"""Read the source weights: a checkpoint file or folder, a model built in memory, or torchvision weights.

Whatever the format, the result is a `SourceWeights`: names, shapes and dtypes up front (all the
plan needs) and a getter that returns one tensor when loading asks for it. Reading needs no
target: a torch checkpoint that nests several state dicts (`state_dict`, `ema` ...) under
`source.key: auto` comes back with all of them as `candidates`, and the plan picks the one that
fits the target (mapping/nested.py). Nothing is read
eagerly: safetensors through their header and memory map, torch zip files with
`torch.load(mmap=True)`, so a tensor's bytes are read from the page cache only when it is used.

Safety: torch files load with `weights_only=True` through safe_load.py. Metadata objects that
checkpoints commonly carry (OmegaConf configs, Lightning's AttributeDict, argparse.Namespace,
numpy scalars) are read as inert placeholders, never as the real classes; anything else pickled
(a whole nn.Module, custom classes) needs `source.trust_pickle=true`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..names import printable
from ..files import check_path, resolve_path
from .hub import is_hub_path, resolve as resolve_hub
from .safe_load import torch_load
from ..schema import SourceConfig
from ..tensor_meta import TensorMeta, meta_of
from .safetensors_header import header_meta

# Nested checkpoint keys, in the order preferred when two fit the target equally well.
NESTED_KEYS = ("state_dict", "model", "module", "model_ema", "ema", "params", "net", "weights")
# A Hugging Face style folder: the first of these that exists is the checkpoint.
FOLDER_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                "pytorch_model.bin")
FORMATS = (".safetensors, a torch.save file (.pt/.pth/.bin/.ckpt), a TorchScript archive (torch.jit.save), "
           "a *.index.json shard index, or a folder")


@dataclass
class SourceWeights:
    description: str  # shown in the report: 'file x.safetensors', 'model torchvision.models.resnet18' ...
    meta: dict[str, TensorMeta]
    get: Callable[[str], Any]  # name -> torch.Tensor (CPU; memory-mapped where the format allows)
    path: Path | None = None
    notes: list[str] = field(default_factory=list)  # e.g. "source.key=auto picked 'state_dict' ..."
    format: str = ""  # 'safetensors', 'torch zip (mmap)', 'torch legacy', 'sharded safetensors' ...
    nested: dict[str, int] = field(default_factory=dict)  # key path -> tensors, for nested torch checkpoints
    key: str = ""  # the nested key path the weights came from ('' = top level)
    extra: dict[str, Any] = field(default_factory=dict)  # format metadata (safetensors __metadata__ ...)
    # key path -> its weights, when source.key=auto leaves a choice (then `meta` is empty until one is chosen)
    candidates: dict[str, SourceWeights] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)  # every file read (a shard index and its shards); [] = [path]
    module: Any = None  # the nn.Module (or TorchScript module) read, where there is one: mapping.verify runs it
    hub: dict[str, Any] | None = None  # an hf:// or timm:// source: repo, commit, files (summary.json's hub_source)

    @property
    def all_files(self) -> list[Path]:
        return self.files or ([self.path] if self.path is not None else [])


def nested_preference(keypath: str) -> int:
    """Higher for the nested keys that usually hold the weights to train from (ties in fit)."""
    last = keypath.rsplit(".", 1)[-1]
    return -NESTED_KEYS.index(last) if last in NESTED_KEYS else -len(NESTED_KEYS)


def _unchosen(name: str) -> Any:
    raise RuntimeError(f"bug: tensor {name} read before a nested key was chosen (mapping.nested.choose_nested)")


def _from_state_dict(sd: Mapping[str, Any], description: str, path: Path | None = None,
                     notes: list[str] | None = None, **kw: Any) -> SourceWeights:
    return SourceWeights(description, meta_of(sd), sd.__getitem__, path, notes or [], **kw)


# --- sniffing --------------------------------------------------------------------------------------

def _read_head(path: Path, n: int = 16) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise UserError(f"source.path: cannot read {path} ({e.strerror or e}). Check the file's permissions.") from None


def sniff(path: Path) -> str:
    """The format from the first bytes, not the name: 'safetensors', 'torch', 'pickle', 'json', 'empty' or 'unknown'."""
    head = _read_head(path)
    if not head:
        return "empty"
    if head[:4] == b"PK\x03\x04":
        return "torch"  # torch.save's zip format (.pt/.pth/.bin/.ckpt alike)
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 1 << 30:
        return "safetensors"  # 8-byte little-endian header length, then the JSON header
    if head[:1] == b"\x80":
        return "pickle"  # torch.save's legacy format or a plain pickle
    if head.lstrip()[:1] in (b"{", b"["):
        return "json"
    return "unknown"


# --- torch files -----------------------------------------------------------------------------------

def _candidates(obj: Any, keypath: str = "", depth: int = 0) -> list[tuple[str, dict]]:
    """Every {name: tensor} dict inside a loaded checkpoint, with the key path that leads to it."""
    import torch
    from torch import nn

    if isinstance(obj, nn.Module):
        return [(keypath, obj.state_dict())]
    if not isinstance(obj, Mapping) or depth > 2:
        return []
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    found = [(keypath, tensors)] if tensors else []
    for k, v in obj.items():
        if isinstance(v, (Mapping, nn.Module)):
            found += _candidates(v, f"{keypath}.{k}" if keypath else str(k), depth + 1)
    return found


def _nested(found: list[tuple[str, dict]], key: str, where: Any) -> list[tuple[str, dict]]:
    """The candidates `source.key` allows: the one it names, or every one for `auto`."""
    if key == "auto":
        return found
    for kp, sd in found:
        if kp == key or (key in ("", "<top level>") and kp == ""):
            return [(kp, sd)]
    listing = ", ".join(f"{kp or '<top level>'!r} ({len(sd)} tensors)" for kp, sd in found)
    raise UserError(f"source.key={key!r}: {where} has no such nested key. Keys holding tensors: {listing}. "
                    "Set source.key to one of them, or to auto.")


# --- formats ---------------------------------------------------------------------------------------

def _read_safetensors(path: Path, key: str = "auto") -> SourceWeights:
    from safetensors import SafetensorError, safe_open

    if key not in ("auto", ""):
        raise UserError(f"source.key={key!r}: {path} is a safetensors file, which is flat (no nested keys). "
                        "Remove source.key (or set it to auto).")
    meta, extra = header_meta(path)
    try:
        f = safe_open(str(path), framework="pt", device="cpu")  # data memory-mapped, read when used
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"source.path: cannot read {path} as safetensors ({e}). "
                        "Is the file truncated or corrupt? Re-download or re-save it.") from None
    return SourceWeights(f"file {path}", meta, f.get_tensor, path, format="safetensors", extra=extra)


def _from_object(obj: Any, key: str, description: str, where: str, path: Path | None = None,
                 notes: list[str] | None = None, kind: str = "") -> SourceWeights:
    """A loaded checkpoint object (state dict, nn.Module, dicts nesting them) -> SourceWeights."""
    found = _candidates(obj)
    if not found:
        keys = f" (keys: {', '.join(map(str, list(obj)[:10]))})" if isinstance(obj, Mapping) else ""
        raise UserError(f"{where} holds a {type(obj).__name__}{keys} with no tensors in it; "
                        "expected a state dict or a dict that nests one.")
    nested = {kp: len(d) for kp, d in found}
    notes = notes or []
    by_key = " (source.key)" if key != "auto" else ""
    allowed = _nested(found, key, path if path is not None else "the source object")
    options = {kp: _from_state_dict(sd, description, path, ([f"weights under nested key {kp!r}{by_key}"] if kp else [])
                                    + notes, format=kind, nested=nested, key=kp) for kp, sd in allowed}
    if len(options) == 1:
        return next(iter(options.values()))
    return SourceWeights(description, {}, _unchosen, path, notes, format=kind, nested=nested, candidates=options)


def read_object(obj: Any, key: str = "auto") -> SourceWeights:
    """A state dict, an nn.Module, or a dict nesting state dicts, given in Python (no file)."""
    from torch import nn

    what = f"model {type(obj).__name__}" if isinstance(obj, nn.Module) else "state dict"
    return _from_object(obj, key, f"{what} in memory", "source", kind=f"{what} in memory")


def is_torchscript(path: Path) -> bool:
    """A `torch.jit.save` archive: a zip with TorchScript code and constants beside the data."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _read_torchscript(path: Path, key: str) -> SourceWeights:
    """Weights of a TorchScript archive, through torch.jit.load: TorchScript's own loader, no Python pickle runs."""
    import torch

    if key not in ("auto", ""):
        raise UserError(f"source.key={key!r}: {path} is a TorchScript archive: its weights are the module's "
                        "state dict (no nested keys). Remove source.key.")
    try:
        with warnings.catch_warnings():  # torch deprecates jit.load in favour of torch.export: nothing a user can act on
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"source.path: cannot read {path} as a TorchScript archive ({first[:200]}). "
                        "Is the file truncated or corrupt?") from None
    src = _from_state_dict(dict(module.state_dict()), f"file {path}", path,
                           [f"TorchScript archive: weights of {module.original_name} read by torch.jit.load"],
                           format="TorchScript archive")
    src.module = module
    return src


def _read_torch(path: Path, key: str, trust_pickle: bool, zipped: bool) -> SourceWeights:
    obj, notes = torch_load(path, trust_pickle, zipped)
    kind = "torch zip (mmap)" if zipped else "torch legacy (read whole)"
    if isinstance(obj, Mapping) and {"pytorch-lightning_version", "state_dict"} <= set(obj):
        kind = f"Lightning checkpoint, {kind}"
    return _from_object(obj, key, f"file {path}", f"source.path: {path}", path, notes, kind)


def _read_sharded(index: Path, trust_pickle: bool) -> SourceWeights:
    """A `*.index.json` {"weight_map": {tensor: shard file}}; every shard must lie in the index's folder."""
    try:
        weight_map = json.loads(index.read_bytes().decode("utf-8"))["weight_map"]
    except UnicodeDecodeError as e:
        raise UserError(f"source.path: {index} is not a shard index (not UTF-8 text at byte {e.start}).") from None
    except (json.JSONDecodeError, KeyError, TypeError, OSError) as e:
        why = f"{e.msg} at byte {e.pos}" if isinstance(e, json.JSONDecodeError) else f"{type(e).__name__}"
        raise UserError(f"source.path: {index} is not a shard index with a 'weight_map' ({why}).") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"source.path: {index}: 'weight_map' must map tensor names to shard files; it is "
                        f"{'empty' if isinstance(weight_map, dict) else 'a ' + type(weight_map).__name__}.")
    folder = index.parent.resolve()
    real_folder = index.resolve().parent  # a hub cache's snapshot links index and shards to files in blobs/
    shards: dict[str, SourceWeights] = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise UserError(f"source.path: {index}: tensor {printable(name)!r} maps to {type(shard).__name__} "
                            f"{printable(str(shard))[:40]!r}, not a shard file name.")
        if shard in shards:
            continue
        p = (index.parent / shard).resolve()
        if Path(shard).is_absolute() or not (p.is_relative_to(folder) or p.is_relative_to(real_folder)):
            raise UserError(f"source.path: {index} names shard {printable(shard)!r}, which lies outside the index's "
                            f"folder {folder}; shards must sit next to their index.")
        if p == index.resolve():
            raise UserError(f"source.path: {index} names itself as a shard ({printable(shard)!r}).")
        if not p.exists():
            raise UserError(f"source.path: {index} names shard {printable(shard)!r}, which is missing from {folder}. "
                            "Download every shard the index lists (or point source.path at a complete checkpoint).")
        check_path(p, "source.path")
        shards[shard] = preferred(_read_file(p, "auto", trust_pickle, sharded=False))
    meta = {}
    for n, s in weight_map.items():
        if n not in shards[s].meta:
            raise UserError(f"source.path: {index} says {printable(n)!r} is in shard {printable(s)!r}, but that shard "
                            f"has no such tensor (it has e.g. {', '.join(map(printable, list(shards[s].meta)[:3]))}). "
                            "The index and shards do not belong together.")
        meta[n] = shards[s].meta[n]
    kinds = {s.format for s in shards.values()}
    return SourceWeights(f"sharded checkpoint {index} ({len(shards)} shards)", meta,
                         lambda n: shards[weight_map[n]].get(n), index,
                         format=f"sharded {'/'.join(sorted(kinds))} ({len(shards)} shards)",
                         files=[index, *(s.path for s in shards.values() if s.path is not None)])


def find_in_folder(folder: Path) -> Path:
    """The checkpoint inside a Hugging Face style folder."""
    for name in FOLDER_FILES:
        if (folder / name).is_file():
            return folder / name
    for pattern in ("*.safetensors.index.json", "*.bin.index.json", "*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt"):
        hits = sorted(folder.glob(pattern))
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise UserError(f"source.path: folder {folder} has several {pattern} files "
                            f"({', '.join(p.name for p in hits[:5])}); point source.path at one of them.")
    files = sorted(p.name for p in folder.iterdir())[:10]
    raise UserError(f"source.path: folder {folder} has no model.safetensors, pytorch_model.bin or shard index "
                    f"(it has: {', '.join(files) or 'nothing'}). Point source.path at the checkpoint file.")


def preferred(src: SourceWeights) -> SourceWeights:
    """Without a target to fit: of nested candidates the usual key (`state_dict` before `ema` ...), said in a note."""
    if not src.candidates:
        return src
    best = max(src.candidates, key=lambda kp: (nested_preference(kp), len(src.candidates[kp].meta)))
    others = ", ".join(repr(k or "<top level>") for k in src.candidates if k != best)
    chosen = src.candidates[best]
    note = (f"source.key=auto: nested key {best or '<top level>'!r} by name (others: {others}); "
            "set source.key to choose another")
    return replace(chosen, notes=[note, *chosen.notes])


def _read_file(path: Path, key: str, trust_pickle: bool, sharded: bool = True) -> SourceWeights:
    kind = sniff(path)
    if path.name.endswith(".json") or kind == "json":
        if not sharded:  # an index naming another index would recurse
            raise UserError(f"source.path: shard {path} is itself a shard index; a shard holds tensors.")
        return _read_sharded(path, trust_pickle)
    if kind == "safetensors":
        return _read_safetensors(path, key)
    if kind == "torch" and is_torchscript(path):
        return _read_torchscript(path, key)
    if kind in ("torch", "pickle"):
        return _read_torch(path, key, trust_pickle, zipped=kind == "torch")
    what = ("is empty" if kind == "empty" else "is not a checkpoint format this pipeline reads (it starts with "
            "neither a safetensors header, a zip archive nor a pickle)")
    raise UserError(f"source.path: {path} {what}. Expected {FORMATS}.")


def local_path(given: str) -> Path:
    """`source.path` as a local file or folder: a plain path, `pkg://...`, or a hub path's file in the hub cache."""
    return resolve_hub(given).path if is_hub_path(given) else resolve_path(given)


def _read_hub(cfg: SourceConfig) -> SourceWeights:
    """`hf://org/name[@rev][/file]` or `timm://name`: the cached file(s) read as any checkpoint, the hub record kept."""
    found = resolve_hub(cfg.path)
    src = read_path(found.path, cfg.key, cfg.trust_pickle)
    rec = found.record
    label = f"{cfg.path} (commit {rec['commit'][:12]}: {', '.join(rec['files'])})"
    for s in (src, *src.candidates.values()):
        s.description, s.hub = label, rec
    return src


def read_path(path: Path, key: str = "auto", trust_pickle: bool = False, given: str | None = None) -> SourceWeights:
    """A checkpoint file or folder -> SourceWeights (nothing but headers and pickles read yet).

    `given`: the path as written in the config, so a message can say how a relative one was read.
    """
    if check_path(path, "source.path", "any", given) == "dir":
        path = find_in_folder(path)
        check_path(path, "source.path")
    return _read_file(path, key, trust_pickle)


def _read_model(node: Mapping[str, Any]) -> SourceWeights:
    """`source.model`: any `_target_` that returns an nn.Module or a state dict."""
    import torch
    from torch import nn

    from ..build import instantiate

    obj = instantiate(node, "source.model")
    if isinstance(obj, nn.Module):
        src = _from_state_dict(obj.state_dict(), f"model {node['_target_']}", format="model in memory")
        src.module = obj  # its tensors are the state dict's: kept at no cost
        return src
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return _from_state_dict(dict(obj), f"state dict from {node['_target_']}", format="state dict in memory")
    raise UserError(f"source.model._target_: {node['_target_']} returned {type(obj).__name__}; expected an "
                    "nn.Module or a state dict ({name: tensor}).")


def read_source(cfg: SourceConfig) -> SourceWeights | None:
    """The source named by the config, or None for 'architecture only' (its nested candidates unchosen)."""
    given = [k for k in ("path", "model", "weights") if getattr(cfg, k) is not None]
    if len(given) > 1:
        raise UserError(f"source: set only one of source.path, source.model, source.weights (got {', '.join(given)}).")
    if not given:
        return None
    if cfg.model is not None:
        return _read_model(cfg.model)
    if cfg.weights is not None:
        from .torchvision_weights import read_torchvision_weights

        return read_torchvision_weights(cfg.weights)
    if is_hub_path(cfg.path):
        return _read_hub(cfg)
    return read_path(resolve_path(cfg.path), cfg.key, cfg.trust_pickle, cfg.path)
