"""A safetensors file's header, read and validated without torch: what a plan and `inspect` see.

The format: 8 bytes (little-endian header length), a JSON object {name: {dtype, shape,
data_offsets}, "__metadata__": {str: str}}, then the tensor data. Everything the safetensors
library would refuse is refused here too, with the tensor named: unknown dtypes, shapes that are
not lists of sizes, offsets that are negative, overlap, run past the file, or do not hold
shape x dtype bytes; metadata that is not text. No message quotes the file's bytes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..names import printable
from ..tensor_meta import DTYPE_BYTES, SAFETENSORS_DTYPES, TensorMeta

MAX_HEADER = 100 << 20  # the safetensors library's own limit on the JSON header


def _bad(path: Path, where: str, what: str) -> UserError:
    return UserError(f"{where}: {path} has a corrupt safetensors header: {what}. Re-download or re-save the file.")


def read_header(path: Path, where: str = "source.path") -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """({name: {dtype, shape, data_offsets}}, __metadata__), every entry checked against the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if size < 8 or n <= 0 or 8 + n > size:
            raise UserError(f"{where}: {path} is truncated or not safetensors (a header of {n:,} bytes in a file of "
                            f"{size:,}). Re-download or re-save it.")
        if n > MAX_HEADER:
            raise _bad(path, where, f"a header of {n:,} bytes (at most {MAX_HEADER:,})")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise _bad(path, where, f"the header is not UTF-8 text (at byte {8 + e.start})") from None
    except json.JSONDecodeError as e:
        raise _bad(path, where, f"the header is not JSON ({e.msg} at byte {8 + e.pos})") from None
    if not isinstance(header, dict):
        raise _bad(path, where, f"the header is a JSON {type(header).__name__}, not an object")
    meta = header.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise _bad(path, where, "__metadata__ must map text to text")
    data = size - 8 - n
    spans = []
    for name, entry in header.items():
        shown = repr(printable(name))
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise _bad(path, where, f"tensor {shown} is not {{dtype, shape, data_offsets}}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise _bad(path, where, f"tensor {shown} has an unknown dtype {printable(str(dtype))!r} "
                                    f"(known: {', '.join(SAFETENSORS_DTYPES)})")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise _bad(path, where, f"tensor {shown} has shape {printable(str(shape))}, not a list of sizes >= 0")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise _bad(path, where, f"tensor {shown} has data_offsets {printable(str(offsets))}, not [begin, end]")
        begin, end = offsets
        if begin < 0 or end < begin:
            raise _bad(path, where, f"tensor {shown} has data_offsets [{begin}, {end}]: negative or reversed")
        want = math.prod(shape) * DTYPE_BYTES[SAFETENSORS_DTYPES[dtype]]
        if end - begin != want:
            raise _bad(path, where, f"tensor {shown} {tuple(shape)} {dtype} needs {want:,} bytes, its offsets give "
                                    f"{end - begin:,}")
        if end > data:
            raise UserError(f"{where}: {path} is truncated: tensor {shown} ends at byte {8 + n + end:,} of a file of "
                            f"{size:,}. Re-download or re-save it.")
        spans.append((begin, end, name))
    spans.sort()
    for (b0, e0, a), (b1, e1, b) in zip(spans, spans[1:]):
        if b1 < e0:
            raise _bad(path, where, f"tensors {printable(a)!r} and {printable(b)!r} overlap "
                                    f"(bytes {b1:,}-{min(e0, e1):,} of the data)")
    return header, meta


def header_meta(path: Path, where: str = "source.path") -> tuple[dict[str, TensorMeta], dict[str, str]]:
    """{name: TensorMeta} and the __metadata__, from the validated header (no torch)."""
    header, extra = read_header(path, where)
    return {name: TensorMeta(tuple(h["shape"]), SAFETENSORS_DTYPES[h["dtype"]]) for name, h in header.items()}, extra
