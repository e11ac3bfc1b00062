"""Apply a LoadPlan to a built model: copy each planned source tensor into its target."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .mapping import LoadPlan, TensorMeta
from .ops import apply_op
from .source import SourceWeights


def target_meta(model: nn.Module) -> dict[str, TensorMeta]:
    """Names, shapes and dtypes of everything a state dict of `model` holds (params + buffers)."""
    return {k: TensorMeta(tuple(v.shape), str(v.dtype).removeprefix("torch."))
            for k, v in model.state_dict(keep_vars=True).items()}


@torch.no_grad()
def load_weights(model: nn.Module, plan: LoadPlan, source: SourceWeights) -> None:
    """Copy what the plan says; everything else keeps the module's own initialisation.

    Writing into the existing tensors (rather than load_state_dict) keeps parameters, their
    `requires_grad` and any optimizer references intact, and casts dtype in the same step.
    """
    state: Mapping[str, torch.Tensor] = model.state_dict(keep_vars=True)
    for entry in plan.entries:
        state[entry.target].copy_(apply_op(entry.op, [source.get(s) for s in entry.sources], entry.args))
