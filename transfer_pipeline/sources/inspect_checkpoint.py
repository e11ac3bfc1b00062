"""Look at one checkpoint on its own: format, nested keys, prefixes, dtypes, size, top-level module tree.

    python -m transfer_pipeline.inspect PATH [--key KEY] [--depth N] [--trust-pickle]

Reads headers and pickles only, never tensor data: a safetensors file is inspected from its
JSON header (torch is not even imported), a torch zip file through a memory map. PATH may be a
file, a `*.index.json` shard index, a Hugging Face style folder or `pkg://package/path`.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..names import printable_text
from ..tables import format_table
from ..tensor_meta import TensorMeta

@dataclass
class Summary:
    path: Path
    format: str
    meta: dict[str, TensorMeta]
    nested: dict[str, int] = field(default_factory=dict)  # key path -> tensors
    key: str = ""
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # safetensors __metadata__
    stored: dict[str, Any] = field(default_factory=dict)  # a torch file's top-level entries besides the weights


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def read(path: Path, key: str = "auto", trust_pickle: bool = False) -> Summary:
    """What `inspect` shows, read lazily (headers, pickles, no tensor data)."""
    from .read import find_in_folder, is_torchscript, preferred, read_path, sniff
    from .safetensors_header import header_meta

    if not path.exists():
        read_path(path)  # raises the usual 'no such file' message
    file = find_in_folder(path) if path.is_dir() else path
    kind = sniff(file)
    if kind == "safetensors" and not file.name.endswith(".json"):
        meta, extra = header_meta(file)  # no torch import: instant on any size
        meta = dict(sorted(meta.items(), key=lambda kv: natural_key(kv[0])))
        return Summary(file, "safetensors", meta, extra=extra)
    if kind in ("torch", "pickle") and not file.name.endswith(".json") and not is_torchscript(file):
        return _read_torch_file(file, key, trust_pickle, zipped=kind == "torch")
    src = preferred(read_path(path, key, trust_pickle))
    return Summary(src.path or file, src.format, src.meta, src.nested, src.key, src.notes, src.extra)


def _read_torch_file(file: Path, key: str, trust_pickle: bool, zipped: bool) -> Summary:
    """A torch.save file, loaded once (weights_only): its weights as a run reads them, and what else it stores.
    Without --trust-pickle, a file a run would refuse for its pickled classes is read with inert stand-ins for
    them (nothing of theirs runs), so that its tensors and entries still show; a whole pickled module, which
    has nothing to show without its classes, is refused as a run refuses it."""
    from ..files import check_path
    from .read import _candidates, _from_object, preferred
    from .safe_load import torch_load

    check_path(file, "source.path")
    try:
        obj, notes = torch_load(file, trust_pickle, zipped)
    except UserError as refused:
        if trust_pickle or "source.trust_pickle=true" not in str(refused):
            raise
        try:
            obj, notes = torch_load(file, False, zipped, inert=True)
        except UserError:
            raise refused from None
        if not isinstance(obj, Mapping) or not _candidates(obj):
            raise refused from None
        notes = [*notes, "pickled classes read as inert placeholders, not unpickled (a run needs "
                         "source.trust_pickle=true for this file; --trust-pickle reads them)"]
    label = "torch zip (mmap)" if zipped else "torch legacy (read whole)"
    if isinstance(obj, Mapping) and {"pytorch-lightning_version", "state_dict"} <= set(obj):
        label = f"Lightning checkpoint, {label}"
    src = preferred(_from_object(obj, key, f"file {file}", f"source.path: {file}", file, notes, label))
    stored = {str(k): v for k, v in obj.items() if str(k) not in src.nested} if isinstance(obj, Mapping) else {}
    return Summary(file, src.format, src.meta, src.nested, src.key, src.notes, src.extra, stored)


def natural_key(name: str) -> list[Any]:
    """'layer10' after 'layer2' (safetensors headers are sorted as plain strings)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def common_prefix(names: Sequence[str]) -> str:
    """The longest dotted prefix every name shares ('module._orig_mod.'), '' when none."""
    if not names:
        return ""
    parts = [n.split(".")[:-1] for n in names]
    out = []
    for group in zip(*parts):
        if len(set(group)) != 1:
            break
        out.append(group[0])
    return "".join(p + "." for p in out)


def tree_rows(meta: Mapping[str, TensorMeta], strip: str, depth: int) -> list[list[str]]:
    """One row per module down to `depth` components (after `strip`): tensors, parameters, dtypes."""
    groups: dict[str, list[str]] = {}
    for name in meta:
        parts = name[len(strip):].split(".")
        label = ".".join(parts[:min(depth, max(len(parts) - 1, 1))])
        groups.setdefault(label, []).append(name)
    rows = []
    for label, names in groups.items():
        numel = sum(meta[n].numel for n in names)
        dtypes = Counter(meta[n].dtype for n in names)
        first = names[0] if len(names) > 1 else ""
        rows.append([label, str(len(names)), f"{numel:,}", ", ".join(dtypes),
                     f"{first[len(strip):]} {tuple(meta[names[0]].shape)}".strip()])
    return rows


def format_summary(s: Summary, depth: int = 1, max_rows: int = 40) -> str:

    meta = s.meta
    numel = sum(m.numel for m in meta.values())
    nbytes = sum(m.nbytes for m in meta.values())
    size = s.path.stat().st_size if s.path.is_file() else 0
    lines = [f"Checkpoint: {s.path}" + (f" ({_human(size)})" if size else ""),
             f"  format: {s.format}"]
    if s.nested:
        shown = ", ".join(f"{k or '<top level>'!r} ({n} tensors){' <- weights' if k == s.key else ''}"
                          for k, n in s.nested.items())
        lines.append(f"  nested keys holding tensors: {shown}")
    lines += [f"  note: {n}" for n in s.notes]
    elements, tensors = Counter(), Counter()
    for m in meta.values():
        elements[m.dtype] += m.numel
        tensors[m.dtype] += 1
    lines.append(f"  tensors: {len(meta):,}   parameters (elements): {numel:,}   data: {_human(nbytes)}")
    lines.append("  dtypes: " + "; ".join(f"{d} {tensors[d]:,} tensors, {n:,} elements" for d, n in elements.most_common()))
    prefix = common_prefix(list(meta))
    firsts = Counter(n.split(".")[0] for n in meta)
    if prefix:
        lines.append(f"  prefix: every name starts with {prefix!r} (a wrapper: the pipeline strips it when the "
                     "target lacks it)")
    elif len(firsts) <= 3 and len(meta) > 1:
        lines.append("  prefixes: " + ", ".join(f"{k!r} {v}" for k, v in firsts.most_common()))
    else:
        lines.append("  prefix: none shared by all names")
    rows = tree_rows(meta, prefix, depth)
    more = len(rows) - max_rows
    lines.append(f"  module tree (depth {depth}{f', after {prefix!r}' if prefix else ''}):")
    lines.append(format_table(["module", "tensors", "params", "dtype", "shape / first tensor"], rows[:max_rows], "    "))
    if more > 0:
        lines.append(f"    ... {more} more (use --depth 1 or --max-rows)")
    lines += stored_lines(s)
    return "\n".join(lines)


# Entries a person needs to build the target, shown in full (flattened) and first, in this order; other plain
# values at the top level follow, and the rest is named with its type only (loops, callbacks, optimizer state).
BUILD_KEYS = ("hyper_parameters", "hparams", "datamodule_hyper_parameters", "hparams_name", "args", "config", "cfg",
              "model_config", "model_args", "arch", "epoch", "global_step", "step", "pytorch-lightning_version")
MAX_VALUE = 100  # characters of one value on its line
MAX_KEYS = 20  # flattened keys shown per entry


def stored_lines(s: Summary) -> list[str]:
    """The section 'stored besides tensors': a torch file's hyper-parameters, args, config, epoch ..., and a
    safetensors file's __metadata__; one line per value, nested dicts as dotted keys (at most MAX_KEYS)."""
    from .safe_load import Opaque

    lines = [f"    {k}: {_one_line(v)}" for k, v in list(s.extra.items())[:MAX_KEYS]]
    if len(s.extra) > MAX_KEYS:
        lines.append(f"    ... (+{len(s.extra) - MAX_KEYS} more)")
    entries = {k: v for k, v in s.stored.items() if not _is_tensor(v)}
    order = [k for k in BUILD_KEYS if k in entries]
    order += [k for k in entries if k not in order and _is_plain(entries[k])]
    for k in order:
        value, kind = _readable(entries[k])
        if isinstance(value, Mapping):
            flat = _flatten(k, value)
            lines.append(f"    {k} ({kind}, {len(flat)} key{'s' * (len(flat) != 1)}):" if flat else f"    {k} ({kind}): empty")
            lines += [f"      {name}: {_one_line(v)}" for name, v in flat[:MAX_KEYS]]
            if len(flat) > MAX_KEYS:
                lines.append(f"      ... (+{len(flat) - MAX_KEYS} more)")
        elif isinstance(value, Opaque):
            lines.append(f"    {k}: a pickled {value.qualname}, " + ("not read without --trust-pickle (a run needs "
                         "source.trust_pickle=true)" if value.needs_trust else "read as an inert placeholder"))
        else:
            lines.append(f"    {k}: {_one_line(value)}" + (f" ({kind})" if kind else ""))
    rest = [f"{k} ({_kind(v)})" for k, v in entries.items() if k not in order]
    if rest:
        lines.append("    other entries: " + _cut(", ".join(rest), 3 * MAX_VALUE))
    if not lines:
        return []
    title = "__metadata__" if s.extra and not s.stored else "stored besides tensors"
    return [f"  {title}:", *lines]


def _is_tensor(v: Any) -> bool:
    return type(v).__name__ in ("Tensor", "Parameter") and hasattr(v, "shape") and hasattr(v, "dtype")


def _is_plain(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str, bytes))


def _holds_tensors(v: Any, depth: int = 0) -> bool:
    if _is_tensor(v):
        return True
    if depth > 3:
        return False
    items = v.values() if isinstance(v, Mapping) else v if isinstance(v, (list, tuple)) else ()
    return any(_holds_tensors(x, depth + 1) for x in items)


def _kind(v: Any) -> str:
    """'dict of 4', 'list of 2, holds tensors', 'argparse.Namespace: needs --trust-pickle' ... for one entry."""
    from .safe_load import Opaque

    if isinstance(v, Opaque):
        return v.qualname + (": a pickled object, --trust-pickle reads it" if v.needs_trust else "")
    size = f" of {len(v)}" if isinstance(v, (Mapping, list, tuple)) else ""
    return type(v).__name__ + size + (", holds tensors" if _holds_tensors(v) else "")


def _readable(v: Any, depth: int = 0) -> tuple[Any, str]:
    """(plain Python data, what it was) for a stored value: the inert stand-ins of weights-only loading opened
    where their pickled state is plain data (argparse.Namespace, OmegaConf configs, paths); never unpickled."""
    from .safe_load import Opaque

    if isinstance(v, Opaque) and not v.needs_trust and depth < 8:
        state = getattr(v, "state", None)
        content = state.get("_content") if isinstance(state, dict) else None
        if v.qualname == "argparse.Namespace" and isinstance(state, dict):
            return {k: _readable(x, depth + 1)[0] for k, x in state.items()}, v.qualname
        if v.qualname.startswith("omegaconf.") and isinstance(content, dict):
            return {str(k): _readable(x, depth + 1)[0] for k, x in content.items()}, v.qualname
        if v.qualname.startswith("omegaconf.") and isinstance(content, (list, tuple)):
            return [_readable(x, depth + 1)[0] for x in content], v.qualname
        if v.qualname.startswith("omegaconf.") and isinstance(state, dict) and "_val" in state:
            return _readable(state["_val"], depth + 1)[0], v.qualname
        if v.qualname.startswith("pathlib.") and getattr(v, "args", ()):
            from pathlib import PurePosixPath

            return str(PurePosixPath(*map(str, v.args))), v.qualname
        return v, v.qualname
    if isinstance(v, Opaque):
        return v, _kind(v)
    if isinstance(v, Mapping) and depth < 8:
        return {k: _readable(x, depth + 1)[0] for k, x in v.items()}, "dict" if type(v) is dict else type(v).__name__
    if isinstance(v, (list, tuple)) and depth < 8:
        return type(v)(_readable(x, depth + 1)[0] for x in v), ""
    attrs = getattr(v, "__dict__", None)  # an object unpickled with --trust-pickle (a Namespace, a config class)
    if isinstance(attrs, dict) and not _holds_tensors(list(attrs.values())) and depth < 8 and not callable(v):
        return {k: _readable(x, depth + 1)[0] for k, x in attrs.items()}, f"{type(v).__module__}.{type(v).__qualname__}"
    return v, ""


def _flatten(prefix: str, value: Mapping, depth: int = 0) -> list[tuple[str, Any]]:
    """Nested dicts as dotted keys ('hyper_parameters.optim.lr'), lists and the rest as values."""
    out: list[tuple[str, Any]] = []
    for k, v in value.items():
        name = f"{prefix}.{k}"
        if isinstance(v, Mapping) and v and depth < 6:
            out += _flatten(name, v, depth + 1)
        else:
            out.append((name, v))
    return out


def _one_line(v: Any) -> str:
    """A value on one line: tensors by shape and dtype, text as it is, the rest as Python writes it; cut at
    MAX_VALUE characters with '...'."""
    if _is_tensor(v):
        text = f"tensor {tuple(v.shape)} {str(v.dtype).removeprefix('torch.')}"
    else:
        text = v if isinstance(v, str) else repr(v)
    return _cut(text.replace("\r", "\\r").replace("\n", "\\n"), MAX_VALUE)


def _cut(text: str, most: int) -> str:
    return text if len(text) <= most else text[:most - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transfer_pipeline.inspect",
                                     description="Show a checkpoint's format, nested keys, prefixes, dtypes, "
                                                 "size and module tree without reading its tensor data.")
    parser.add_argument("path", help="checkpoint file, *.index.json, folder, or pkg://package/path")
    parser.add_argument("--key", default="auto", help="nested key of the weights (default: auto)")
    parser.add_argument("--depth", type=int, default=1, help="module tree depth (default 1: top-level modules)")
    parser.add_argument("--max-rows", type=int, default=40, help="most tree rows shown (default 40)")
    parser.add_argument("--trust-pickle", action="store_true", help="allow full pickled modules (runs code)")
    args = parser.parse_args(argv)
    from .read import local_path

    try:
        summary = read(local_path(args.path), args.key, args.trust_pickle)  # hf://, timm://: the file in the hub cache
    except UserError as e:
        hint = " (here: --trust-pickle)" if "source.trust_pickle=true" in str(e) else ""
        print(f"error: {printable_text(str(e))}{hint}", file=sys.stderr)
        return 2
    try:
        print(printable_text(format_summary(summary, max(args.depth, 1), args.max_rows)))  # names and metadata escaped
        sys.stdout.flush()
    except BrokenPipeError:  # `inspect ckpt | head`: the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
    return 0


if __name__ == "__main__":
    sys.exit(main())
