"""`optim.regularize=l2_sp` (Li, Grandvalet and Davoine 2018, "Explicit inductive bias for transfer learning with
convolutional networks"): instead of weight decay toward zero, the tensors loaded from the source are
pulled toward the source's values, and the fresh ones (a new head) toward zero:

    penalty = alpha / 2 * sum over loaded w of ||w - w_source||^2  +  beta / 2 * sum over fresh w of ||w||^2

Only parameters that train at some point of the run take part (frozen ones cannot move). The anchors
are the loaded values themselves, copied once when training is planned (after the load, before a resume
puts the checkpoint's weights in), so they cost one copy of the loaded trainable parameters. The penalty's
gradient is added to the parameters' gradients before each optimizer step, after loss scaling is undone
and before gradient clipping: exactly what adding the penalty to the loss would give (coupled, as L2 in
Adam; the paper used SGD), without a second graph. The logged train loss is the task's loss alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError


@dataclass
class L2SP:
    alpha: float
    beta: float
    anchors: dict[str, Any]  # loaded parameter name -> its value as loaded (the source's, after the mapping's ops)
    fresh: list[str] = field(default_factory=list)  # parameters the load left fresh that train

    def to_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta, "loaded_tensors": len(self.anchors),
                "loaded_params": sum(t.numel() for t in self.anchors.values()), "fresh_tensors": len(self.fresh)}

    def describe(self) -> str:
        loaded = sum(t.numel() for t in self.anchors.values())
        return (f"optim.regularize=l2_sp: {len(self.anchors)} loaded tensor(s) ({loaded:,} parameters) pulled toward "
                f"the source's values (alpha {self.alpha:g}), {len(self.fresh)} fresh tensor(s) toward zero "
                f"(beta {self.beta:g}); weight decay off")

    def penalty(self, model: Any) -> float:
        """The penalty's value for `model`'s parameters now (what the added gradients are the gradient of)."""
        params = dict(model.named_parameters())
        near = sum(float((params[n].detach().float() - a.float()).pow(2).sum()) for n, a in self.anchors.items())
        zero = sum(float(params[n].detach().float().pow(2).sum()) for n in self.fresh)
        return self.alpha / 2 * near + self.beta / 2 * zero

    def distance(self, model: Any) -> float:
        """||w - w_source|| over the loaded tensors: how far training moved them from the source."""
        params = dict(model.named_parameters())
        return sum(float((params[n].detach().float() - a.float()).pow(2).sum()) for n, a in self.anchors.items()) ** 0.5

    def add_gradients(self, model: Any) -> Callable[[], None]:
        """The step's hook: each trainable parameter's gradient += the penalty's gradient (alpha (w - w_source) or
        beta w). A parameter that trains but got no gradient this step (unused by the forward) gets the penalty's."""
        import torch

        params = dict(model.named_parameters())
        pulls = [(params[n], a, self.alpha) for n, a in self.anchors.items()] + [(params[n], None, self.beta)
                                                                              for n in self.fresh]

        def add() -> None:
            with torch.no_grad():
                for p, anchor, strength in pulls:
                    if not p.requires_grad or strength == 0:
                        continue
                    g = (p - anchor if anchor is not None else p) * strength
                    if p.grad is None:
                        p.grad = g
                    else:
                        p.grad.add_(g)

        return add


def plan_l2_sp(model: Any, loaded: Iterable[str], ever_trainable: set[str], alpha: float, beta: float,
               has_source: bool) -> L2SP:
    """The anchors (copies of the loaded parameters that train at some point) and the fresh trainable ones."""
    params = dict(model.named_parameters())
    loaded = set(loaded)
    anchored = [n for n in params if n in loaded and n in ever_trainable]
    if not anchored:
        why = ("this run has no source (source.path / source.weights / source.model)" if not has_source else
               "none of the loaded tensors ever trains (only fresh ones do: "
               f"{', '.join(sorted(ever_trainable)[:3]) or 'none'})")
        raise UserError(f"optim.regularize=l2_sp pulls loaded tensors toward the source's values, but {why}. Train "
                        "loaded layers (freeze.trainable, freeze.schedule), or drop optim.regularize.")
    anchors = {n: params[n].detach().clone() for n in anchored}
    fresh = [n for n in params if n in ever_trainable and n not in loaded]
    return L2SP(alpha, beta, anchors, fresh)
