"""Shape planning for the rule ops: one `plan_<op>` per op in rules.OP_KEYS.

Each takes (rule, source names, their shapes, target name, target shape, split part), checks
that the op turns those shapes into the target's, and returns the arguments the op in ops.py
needs. Pure: no torch, no tensor data; errors name the rule's key, the tensors and both shapes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import UserError
from .rules import DEFAULT_INTERPOLATE_MODE, INTERPOLATE_MODES, Rule


def _fmt(names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> str:
    return ", ".join(f"{n} {tuple(s)}" for n, s in zip(names, shapes))


def _dim(rule: Rule, d: int, ndim: int, names: Sequence[str], shapes: Sequence[tuple[int, ...]], key: str = "dim") -> int:
    if not -ndim <= d < ndim:
        raise UserError(f"{rule.where}.{key}: dim {d} does not exist in {_fmt(names, shapes)} ({ndim}-D).")
    return d % ndim


def _result_error(rule: Rule, what: str, names: Sequence[str], shapes: Sequence[tuple[int, ...]],
                  result: tuple[int, ...], target: str, tshape: tuple[int, ...], fix: str) -> UserError:
    return UserError(f"{rule.where} ({rule.op}): {what} of {_fmt(names, shapes)} gives {tuple(result)}, but target "
                     f"{target} is {tuple(tshape)}. {fix}")


def plan_concat(rule, names, shapes, target, tshape, part):
    nd = len(shapes[0])
    if any(len(s) != nd for s in shapes):
        raise UserError(f"{rule.where} (concat): the parts have different numbers of dims: {_fmt(names, shapes)}.")
    d = _dim(rule, rule.arg("dim"), nd, names, shapes)
    for k in range(nd):
        if k != d and len({s[k] for s in shapes}) > 1:
            raise UserError(f"{rule.where}.dim: cannot concatenate {_fmt(names, shapes)} along dim {d}: they differ "
                            f"in dim {k}. Concatenate along the dim where the parts differ.")
    result = tuple(sum(s[k] for s in shapes) if k == d else shapes[0][k] for k in range(nd))
    if result != tshape:
        raise _result_error(rule, f"concatenating along dim {d}", names, shapes, result, target, tshape,
                            "Check `dim` and that the patterns pick the right tensors.")
    return {"dim": d}


def plan_split(rule, names, shapes, target, tshape, part):
    (shape,) = shapes
    d = _dim(rule, rule.arg("dim"), len(shape), names, shapes)
    n = len(rule.targets)
    sizes = rule.arg("sizes")
    if sizes is None:
        if shape[d] % n:
            raise UserError(f"{rule.where} (split): {names[0]} {tuple(shape)} has {shape[d]} along dim {d}, which "
                            f"does not split into {n} equal parts; give `sizes:` (one per target).")
        sizes = (shape[d] // n,) * n
    elif sum(sizes) != shape[d]:
        raise UserError(f"{rule.where}.sizes: {list(sizes)} sum to {sum(sizes)}, but {names[0]} {tuple(shape)} has "
                        f"{shape[d]} along dim {d}.")
    result = shape[:d] + (sizes[part],) + shape[d + 1:]
    if result != tshape:
        raise _result_error(rule, f"part {part} of splitting along dim {d} into {list(sizes)}", names, shapes,
                            result, target, tshape, "Check `dim`, `sizes` and the order of `to`.")
    return {"dim": d, "sizes": tuple(sizes), "index": part}


def plan_transpose(rule, names, shapes, target, tshape, part):
    (shape,) = shapes
    if len(shape) < 2:
        raise UserError(f"{rule.where} (transpose): {names[0]} {tuple(shape)} has fewer than 2 dims; transpose "
                        "the weight only (a separate rule for the bias).")
    a, b = (_dim(rule, x, len(shape), names, shapes, "dims") for x in rule.arg("dims"))
    result = list(shape)
    result[a], result[b] = result[b], result[a]
    if tuple(result) != tshape:
        raise _result_error(rule, f"transposing dims {a} and {b}", names, shapes, tuple(result), target, tshape,
                            "Is this the right tensor, or does it need `reshape`?")
    return {"dims": (a, b)}


def plan_reshape(rule, names, shapes, target, tshape, part):
    (shape,) = shapes
    want = rule.arg("shape")
    if want is not None:
        if list(want).count(-1) > 1:
            raise UserError(f"{rule.where}.shape: {list(want)} has more than one -1.")
        known = math.prod(x for x in want if x != -1)
        total = math.prod(shape)
        want = tuple(total // known if x == -1 and known else x for x in want)
        if want != tshape:
            raise UserError(f"{rule.where}.shape: {list(rule.arg('shape'))} means {want} for {names[0]} "
                            f"{tuple(shape)}, but target {target} is {tuple(tshape)}; leave `shape` out to "
                            "reshape to the target's shape.")
    if math.prod(shape) != math.prod(tshape):
        raise UserError(f"{rule.where} (reshape): {names[0]} {tuple(shape)} has {math.prod(shape)} elements, "
                        f"target {target} {tuple(tshape)} has {math.prod(tshape)}; a reshape keeps every element.")
    return {"shape": tuple(tshape)}


def plan_adapt_channels(rule, names, shapes, target, tshape, part):
    (shape,) = shapes
    if len(shape) < 3 or len(tshape) != len(shape):
        raise UserError(f"{rule.where} (adapt_channels): adapts dim 1 (input channels) of a conv weight "
                        f"[out, in, *kernel]; {names[0]} is {tuple(shape)} and target {target} is {tuple(tshape)}.")
    other = [k for k in range(len(shape)) if k != 1 and shape[k] != tshape[k]]
    if other:
        raise UserError(f"{rule.where} (adapt_channels): {names[0]} {tuple(shape)} and target {target} "
                        f"{tuple(tshape)} differ in dim {other[0]}; only the input channels (dim 1) can change.")
    return {"channels": tshape[1]}


def plan_select(rule, names, shapes, target, tshape, part):
    (shape,) = shapes
    d = _dim(rule, rule.arg("dim"), len(shape), names, shapes)
    indices = rule.arg("indices")
    bad = [i for i in indices if i >= shape[d]]
    if bad:
        raise UserError(f"{rule.where}.indices: {bad[:5]} out of range for {names[0]} {tuple(shape)}, which has "
                        f"{shape[d]} rows along dim {d} (valid 0..{shape[d] - 1}).")
    result = shape[:d] + (len(indices),) + shape[d + 1:]
    if result != tshape:
        raise _result_error(rule, f"keeping {len(indices)} rows along dim {d}", names, shapes, result, target,
                            tshape, f"Give one index per target row ({tshape[d] if d < len(tshape) else '?'}).")
    return {"dim": d, "indices": tuple(indices)}


def _isqrt(n: int) -> int | None:
    r = math.isqrt(n) if n >= 0 else -1
    return r if r >= 0 and r * r == n else None


def plan_interpolate(rule, names, shapes, target, tshape, part):
    (shape,) = shapes
    if len(shape) != len(tshape):
        raise UserError(f"{rule.where} (interpolate): {names[0]} {tuple(shape)} and target {target} {tuple(tshape)} "
                        "have different numbers of dims; resize keeps the dims, add `reshape` first.")
    dims = rule.arg("dims")
    if dims is None:
        dims = tuple(k for k in range(len(shape)) if shape[k] != tshape[k])
    dims = tuple(sorted({_dim(rule, k, len(shape), names, shapes, "dims") for k in dims}))
    fixed = [k for k in range(len(shape)) if k not in dims and shape[k] != tshape[k]]
    if fixed:
        raise UserError(f"{rule.where}.dims: {names[0]} {tuple(shape)} and target {target} {tuple(tshape)} differ "
                        f"in dim {fixed[0]}, which is not resized (dims: {list(dims)}).")
    grid, prefix = rule.arg("grid"), rule.arg("prefix_tokens")
    if grid:
        if len(dims) != 1:
            raise UserError(f"{rule.where}.grid: a token grid is one dim of {names[0]} {tuple(shape)} (the tokens); "
                            f"got dims {list(dims)}.")
        d = dims[0]
        sides = [_isqrt(n - prefix) for n in (shape[d], tshape[d])]
        if None in sides or 0 in sides:
            raise UserError(f"{rule.where}.grid: {names[0]} has {shape[d]} tokens and target {target} {tshape[d]} "
                            f"along dim {d}; minus prefix_tokens={prefix} both must be square grids (n*n).")
        spatial = 2
    elif prefix:
        raise UserError(f"{rule.where}.prefix_tokens: only applies with grid: true (a position embedding).")
    else:
        spatial = len(dims)
    mode = rule.arg("mode") or DEFAULT_INTERPOLATE_MODE.get(spatial, "nearest")
    if spatial and not 1 <= spatial <= 3:
        raise UserError(f"{rule.where}.dims: at most 3 dims can be resized at once, got {list(dims)}.")
    if spatial and spatial not in INTERPOLATE_MODES[mode]:
        raise UserError(f"{rule.where}.mode: {mode!r} resizes {INTERPOLATE_MODES[mode]} dim(s), here {spatial} "
                        f"({'a token grid' if grid else f'dims {list(dims)}'}); choose "
                        f"{[m for m, n in INTERPOLATE_MODES.items() if spatial in n]}.")
    return {"dims": dims, "size": tuple(tshape[k] for k in dims), "mode": mode, "grid": bool(grid),
            "prefix_tokens": prefix, "align_corners": rule.arg("align_corners")}


def plan_rename(rule, names, shapes, target, tshape, part):
    return {}


PLANNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "rename": plan_rename, "concat": plan_concat, "split": plan_split, "transpose": plan_transpose,
    "reshape": plan_reshape, "adapt_channels": plan_adapt_channels, "select": plan_select,
    "interpolate": plan_interpolate,
}
OP_NAMES = {"rename": "copy"}  # the ops.py function each rule op uses, where the names differ


def plan_op(rule: Rule, names: Sequence[str], shapes: Sequence[tuple[int, ...]], target: str,
            tshape: tuple[int, ...], part: int = 0) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """(ops.py op name, its arguments) turning the tensors `names` into `target`; shape errors raise here."""
    args = PLANNERS[rule.op](rule, list(names), [tuple(s) for s in shapes], target, tuple(tshape), part)
    return OP_NAMES.get(rule.op, rule.op), tuple(sorted(args.items()))
