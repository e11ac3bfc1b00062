"""What a plan knows of a tensor: shape and dtype name. Shared by sources, mapping, reports and inspect.

Torch-free: dtypes are plain names ('float32', 'bfloat16'), so a plan from a safetensors header
never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TensorMeta:
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES.get(self.dtype, 4)


# safetensors header dtype codes -> the names torch gives the same dtypes
SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                      "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32",
                      "I16": "int16", "I8": "int8", "U64": "uint64", "U32": "uint32", "U16": "uint16",
                      "U8": "uint8", "BOOL": "bool"}
DTYPE_BYTES = {"float64": 8, "int64": 8, "uint64": 8, "complex64": 8, "complex128": 16, "float32": 4, "int32": 4,
               "uint32": 4, "float16": 2, "bfloat16": 2, "int16": 2, "uint16": 2, "int8": 1, "uint8": 1, "bool": 1,
               "float8_e4m3fn": 1, "float8_e5m2": 1}


def dtype_name(dtype: Any) -> str:
    """torch.float32 -> 'float32' (works on the dtype object without importing torch here)."""
    return str(dtype).removeprefix("torch.")


def meta_of(tensors: Mapping[str, Any]) -> dict[str, TensorMeta]:
    """{name: TensorMeta} of a state dict (tensors on any device, meta included)."""
    return {k: TensorMeta(tuple(v.shape), dtype_name(v.dtype)) for k, v in tensors.items()}


def dtype_kind(name: str) -> str:
    """'float' (bfloat16, float8 ... too), 'int' (unsigned too), 'complex', 'bool', or the name itself."""
    if name == "bool":
        return "bool"
    for kind in ("complex", "float", "int"):
        if name.startswith(kind) or (kind == "int" and name.startswith("uint")) or (kind == "float" and name == "bfloat16"):
            return kind
    return name
