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
    extra: dict[str, Any] = field(default_factory=dict)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def read(path: Path, key: str = "auto", trust_pickle: bool = False) -> Summary:
    """What `inspect` shows, read lazily (headers, pickles, no tensor data)."""
    from .read import find_in_folder, preferred, read_path, sniff
    from .safetensors_header import header_meta

    if not path.exists():
        read_path(path)  # raises the usual 'no such file' message
    file = find_in_folder(path) if path.is_dir() else path
    if sniff(file) == "safetensors" and not file.name.endswith(".json"):
        meta, extra = header_meta(file)  # no torch import: instant on any size
        meta = dict(sorted(meta.items(), key=lambda kv: natural_key(kv[0])))
        return Summary(file, "safetensors", meta, extra=extra)
    src = preferred(read_path(path, key, trust_pickle))
    return Summary(src.path or file, src.format, src.meta, src.nested, src.key, src.notes, src.extra)


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
    if s.extra:
        lines.append("  metadata: " + ", ".join(f"{k}={v}" for k, v in list(s.extra.items())[:8]))
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
    return "\n".join(lines)


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
    from ..files import resolve_path

    try:
        summary = read(resolve_path(args.path), args.key, args.trust_pickle)
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
