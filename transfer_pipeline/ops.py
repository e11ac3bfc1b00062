"""Tensor ops that a LoadEntry applies when loading (the plan in mapping.py names them).

Each op takes the source tensors (in the entry's `sources` order) and the entry's arguments,
and returns the target tensor. Ops are looked up in a table, so a new rule kind is one function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


def copy(tensors: Sequence[torch.Tensor], **_: Any) -> torch.Tensor:
    return tensors[0]


OPS: dict[str, Callable[..., torch.Tensor]] = {"copy": copy}


def apply_op(op: str, tensors: Sequence[torch.Tensor], args: tuple[tuple[str, Any], ...] = ()) -> torch.Tensor:
    return OPS[op](tensors, **dict(args))
