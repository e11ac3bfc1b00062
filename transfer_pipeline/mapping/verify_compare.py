"""One module pair of mapping.verify: compare its outputs, and tell a real difference from a pair whose
computations cannot correspond (a fused module, a skip on one side only, another call count or shape).

`observe` runs in the target's forward hook (it needs the live modules and inputs); `judge` runs after
both models ran, when call counts and the final outputs are known. A reason reads `kind: short; why`:
verify.py counts the kinds and shows the short part as an example.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

NOT_COMPARABLE, AGREE, FAULTY, DOWNSTREAM = "not comparable", "agree", "faulty", "downstream"


def tensors(out: Any) -> list[torch.Tensor | None]:
    """A module's output as positions (tensors; tuples/lists/dict values element-wise; None: not a tensor)."""
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [o.detach().clone() if isinstance(o, torch.Tensor) else None for o in out]
    return [out.detach().clone()] if isinstance(out, torch.Tensor) else []


def compare(got: list, want: list, atol: float, rtol: float) -> tuple[bool, float] | None:
    """(agree, max |diff|) over the positions both sides hold tensors; None when there are none."""
    pairs = [(a, b) for a, b in zip(got, want) if a is not None and b is not None]
    if not pairs:
        return None
    ok, worst = True, 0.0
    for a, b in pairs:
        if a.shape != b.shape:
            return False, math.inf
        wide = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
        a, b = a.to(b.device, wide), b.to(wide)  # b, the source's, is the reference
        diff = (a - b).abs()
        ok = ok and bool((diff <= atol + rtol * b.abs()).all())
        worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
    return ok, worst


@dataclass
class Seen:
    """A target module's first call beside its source module's: what `judge` needs afterwards."""

    target: str
    source: str
    agree: bool
    diff: float
    input_agrees: bool = True  # (no tensor input to compare counts as agreeing)
    shapes: tuple[tuple, tuple] | None = None  # (source, target) output shapes, where they differ
    skip: str | None = None  # "source" / "target" [act]: that side adds its input to what the other computes
    part: str | None = None  # fused: the base class whose forward was run on the subclass module
    part_diff: tuple[bool, float] | None = None  # that base part against the other side; None: could not run


def _shapes(got: list, want: list) -> tuple[tuple, tuple] | None:
    return next(((tuple(b.shape), tuple(a.shape)) for a, b in zip(got, want)
                 if a is not None and b is not None and a.shape != b.shape), None)


def _first(xs: list) -> torch.Tensor | None:
    return xs[0] if xs and isinstance(xs[0], torch.Tensor) else None


# what a residual block may apply after adding its skip (ResNet's relu): identity first
_AFTER_SKIP = {"": lambda t: t, "relu": torch.relu, "relu6": nn.functional.relu6, "silu": nn.functional.silu,
               "gelu": nn.functional.gelu}


def _adds_input(inp: torch.Tensor | None, body: torch.Tensor | None, out: torch.Tensor | None,
                atol: float, rtol: float) -> str | None:
    """out == act(inp + body) (a residual block against a counterpart without its skip): the act's name
    ('' for none); None: no skip explains the difference."""
    if inp is None or body is None or out is None or not inp.shape == body.shape == out.shape:
        return None
    added = inp.to(body.device, body.dtype) + body
    return next((name for name, act in _AFTER_SKIP.items()
                 if (compare([act(added)], [out], atol, rtol) or (False, 0.0))[0]), None)


def _base_part(s_mod: nn.Module, t_mod: nn.Module, args: tuple, s_out: list, t_out: list,
               atol: float, rtol: float) -> tuple[str | None, tuple[bool, float] | None]:
    """One class subclasses the other (BatchNormAct2d is a BatchNorm2d): run the base class's forward on the
    subclass module and compare it with the other side. (base class name, (agree, diff)); (None, None): not fused."""
    s_cls, t_cls = type(s_mod), type(t_mod)
    if s_cls is t_cls or not (issubclass(s_cls, t_cls) or issubclass(t_cls, s_cls)):
        return None, None
    sub, base, other = (s_mod, t_cls, t_out) if issubclass(s_cls, t_cls) else (t_mod, s_cls, s_out)
    ref = next((p for p in [*sub.parameters(), *sub.buffers()] if p.is_floating_point()), None)
    if ref is not None:  # the target's input, as the subclass module's side takes it
        args = tuple(a.to(ref.device, ref.dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                     for a in args)
    try:
        return base.__name__, compare(tensors(base.forward(sub, *args)), other, atol, rtol)
    except Exception:  # noqa: BLE001 - a base forward that cannot run on the subclass: the pair stays fused
        return base.__name__, None


def observe(target: str, source: str, s_mod: nn.Module | None, t_mod: nn.Module, args: Any, out: Any,
            seen: tuple[list, list], atol: float, rtol: float) -> Seen | None:
    """The target module `target`'s first call against its source module's (`seen`: its inputs, outputs).

    Only a pair whose outputs differ on agreeing inputs gets the numerical checks (skip, base part)."""
    want_in, want_out = seen
    got_out = tensors(out)
    got = compare(got_out, want_out, atol, rtol)
    if got is None:
        return None
    p = Seen(target, source, *got)
    if p.agree:
        return p
    got_in = tensors(args)
    p.input_agrees = (compare(got_in, want_in, atol, rtol) or (True, 0.0))[0]
    p.shapes = _shapes(got_out, want_out)
    if p.input_agrees and p.shapes is None:
        s_in, s_out, t_in, t_out = _first(want_in), _first(want_out), _first(got_in), _first(got_out)
        for side, (inp, body, whole) in {"source": (s_in, t_out, s_out), "target": (t_in, s_out, t_out)}.items():
            act = _adds_input(inp, body, whole, atol, rtol)
            if act is not None:
                p.skip = side + (f" {act}" if act else "")
                break
        if s_mod is not None and p.skip is None and isinstance(args, tuple):
            p.part, p.part_diff = _base_part(s_mod, t_mod, args, want_out, got_out, atol, rtol)
    return p


def _names(s_cls: type, t_cls: type) -> tuple[str, str]:
    """Class names to show; qualified where both sides' are spelled the same (timm's and torchvision's
    InvertedResidual)."""
    if s_cls.__name__ != t_cls.__name__:
        return s_cls.__name__, t_cls.__name__
    return f"{s_cls.__module__}.{s_cls.__qualname__}", f"{t_cls.__module__}.{t_cls.__qualname__}"


def judge(p: Seen, s_cls: type, t_cls: type, s_calls: int, t_calls: int, final_agrees: bool) -> tuple[str, str]:
    """(verdict, reason) for a pair after both runs: AGREE, NOT_COMPARABLE (reason `kind: short; why`),
    FAULTY (the difference starts inside it) or DOWNSTREAM (its input already differs), these two with a
    reason where there is more to say."""
    if p.agree:
        return AGREE, ""
    if s_calls != t_calls:  # (a cell stepped per time step against a layer run once per sequence)
        return (NOT_COMPARABLE, f"call count: {s_calls}x vs {t_calls}x; called {s_calls}x in the source, "
                                f"{t_calls}x in the target")
    if p.shapes is not None:
        (s, t) = p.shapes
        if s_cls is not t_cls or math.prod(s) == math.prod(t):  # another layout of the same numbers, or other code
            return NOT_COMPARABLE, f"different shapes: {s} vs {t}; outputs shaped source {s}, target {t}"
        # one kind of module, called as often, computing other sizes: not the counterpart (a rule maps another's)
        return (FAULTY if p.input_agrees else DOWNSTREAM,
                f"outputs of other sizes, source {s} vs target {t}, from two {s_cls.__name__}s: the rules may load "
                "it from another module's tensors")
    if not p.input_agrees:
        return DOWNSTREAM, ""
    s, t = _names(s_cls, t_cls)
    if p.skip is not None:
        side, _, act = p.skip.partition(" ")
        adds, lacks = (("source", s), ("target", t)) if side == "source" else (("target", t), ("source", s))
        return (NOT_COMPARABLE, f"skip: {s} vs {t}; the {adds[0]}'s {adds[1]} adds its input (a skip"
                                f"{f', then {act}' if act else ''}) that the {lacks[0]}'s {lacks[1]} lacks")
    if p.part is not None:
        sub, base = (s, t) if issubclass(s_cls, t_cls) else (t, s)
        side = "source" if sub == s else "target"
        if p.part_diff is None:
            return NOT_COMPARABLE, f"fused: {s} vs {t}; the {side}'s {sub} is a {base} with more in its forward"
        if p.part_diff[0]:
            return (NOT_COMPARABLE, f"fused: {s} vs {t}; the {side}'s {sub} is a {base} with more in its forward "
                                    f"(its {base} part agrees, max |diff| {p.part_diff[1]:.2g})")
        return FAULTY, f"fused ({s} vs {t}): its {base} part differs (max |diff| {p.part_diff[1]:.3g})"
    if s_cls is not t_cls and final_agrees:  # the whole function agrees: the boundaries differ, not the load
        return (NOT_COMPARABLE, f"different kinds: {s} vs {t}; their outputs differ on the same input, and "
                                "the final output agrees")
    return FAULTY, ""
