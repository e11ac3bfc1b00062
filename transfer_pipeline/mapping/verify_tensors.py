"""mapping.verify without a source model: every loaded tensor against its source tensors after its op, bit for bit."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..sources.read import SourceWeights
from .op_kernels import apply_op
from .plan import LoadPlan


@dataclass
class TensorCheck:
    """What `verify_tensors` found: every loaded tensor against its source after the op, bit for bit."""

    ok: bool
    checked: int
    mismatched: list[str] = field(default_factory=list)  # target names, in plan order
    details: list[str] = field(default_factory=list)  # one line per mismatch

    @property
    def first_mismatch(self) -> str | None:
        return self.mismatched[0] if self.mismatched else None

    def describe(self) -> str:
        if self.ok:
            return f"mapping.verify: all {self.checked} loaded tensors equal their source tensors after the op (bitwise)"
        return (f"mapping.verify: FAILED: {len(self.mismatched)} of {self.checked} loaded tensors are not their "
                f"source tensors after the op; first: {self.details[0]}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "first_mismatch": self.first_mismatch}


def _bits(t: torch.Tensor) -> torch.Tensor:
    # bytes, not values: torch.equal calls NaN unequal to itself and -0.0 equal to 0.0
    return t.contiguous().reshape(-1).view(torch.uint8) if t.is_floating_point() or t.is_complex() else t


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(_bits(a), _bits(b.to(a.device)))


@torch.no_grad()
def verify_tensors(plan: LoadPlan, source: SourceWeights, target_state: Mapping[str, torch.Tensor]) -> TensorCheck:
    """Recompute every planned entry from the source (op, then the target's dtype) and compare bitwise.

    `target_state`: the loaded model's `state_dict()` (or the export about to be written). Tied
    names must hold what their loaded alias holds. Reads each source tensor once per entry.
    """
    bad: list[tuple[str, str]] = []
    for e in plan.entries:
        have = target_state.get(e.target)
        if have is None:
            bad.append((e.target, f"{e.target}: not in the target's state dict"))
            continue
        want = apply_op(e.op, [source.get(n) for n in e.sources], e.args).to(device=have.device, dtype=have.dtype)
        if not _same_bits(have, want):
            diff = "shape" if have.shape != want.shape else f"max |diff| {float((have.double() - want.double()).abs().max()):.3g}"
            bad.append((e.target, f"{e.target} (from {' + '.join(e.sources)} by {e.op}): {diff}"))
    for name, alias in plan.tied.items():
        if name in target_state and alias in target_state and not _same_bits(target_state[name], target_state[alias]):
            bad.append((name, f"{name}: tied to {alias} but holds other values"))
    checked = len(plan.entries) + len(plan.tied)
    return TensorCheck(not bad, checked, [n for n, _ in bad], [d for _, d in bad])
