"""Mapping ops, torch-free half: for each op its keys (defaults and checks) and its shape plan.

An op is one `OpSpec` in `OPS` plus one kernel of the same `kernel` name in op_kernels.py (the
torch half, which checks at import that the two tables agree). To add an op: write its
`plan_<op>` here (check that the op turns the source shapes into the target's, return the
arguments the kernel needs) and an `OpSpec` with its keys, then its kernel in op_kernels.py.
rules.py parses and validates a rule's keys through the spec; mapping/plan.py calls `plan_op`.
Pure: no torch, no tensor data; errors name the rule's key, the tensors and both shapes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from ..files import check_path, resolve_path

INTERPOLATE_MODES = {"nearest": (1, 2, 3), "area": (1, 2, 3), "linear": (1,), "bilinear": (2,),
                     "bicubic": (2,), "trilinear": (3,)}
DEFAULT_INTERPOLATE_MODE = {1: "linear", 2: "bicubic", 3: "trilinear"}


# --- key checks: (value, where) -> the checked value ---------------------------------------------------

def _is_list(v: Any) -> bool:
    return isinstance(v, Sequence) and not isinstance(v, (str, bytes))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def int_list(what: str, minimum: int | None = None) -> Callable[[Any, str], tuple[int, ...]]:
    def check(v: Any, where: str) -> tuple[int, ...]:
        if not _is_list(v) or not all(_is_int(x) for x in v):
            raise UserError(f"{where}: expected a list of integers ({what}), got {v!r}.")
        if minimum is not None and any(x < minimum for x in v):
            raise UserError(f"{where}: every value must be >= {minimum} ({what}), got {list(v)}.")
        return tuple(v)
    return check


def two_dims(v: Any, where: str) -> tuple[int, ...]:
    dims = int_list("the dims to swap")(v, where)
    if len(dims) != 2:
        raise UserError(f"{where}: transpose swaps two dims, e.g. dims: [0, 1]; got {list(dims)}.")
    return dims


def an_int(minimum: int | None = None) -> Callable[[Any, str], int]:
    def check(v: Any, where: str) -> int:
        if not _is_int(v) or (minimum is not None and v < minimum):
            raise UserError(f"{where}: expected an integer{f' >= {minimum}' if minimum is not None else ''}, got {v!r}.")
        return v
    return check


def a_bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise UserError(f"{where}: expected true or false, got {v!r}.")
    return v


def a_mode(v: Any, where: str) -> str:
    if v not in INTERPOLATE_MODES:
        raise UserError(f"{where}: {v!r} is not an interpolation mode; choose one of {sorted(INTERPOLATE_MODES)}.")
    return v


def read_label_map(path: Any, where: str) -> tuple[int, ...]:
    """Source row indices in target order: a JSON list, or text with one index per line (`#` comments).

    A text line may carry the class name after the index (`207 golden retriever`); only the index counts.
    """
    p = resolve_path(str(path), where)
    check_path(p, where, "file", str(path))
    try:
        text = p.read_text()
    except UnicodeDecodeError as e:
        raise UserError(f"{where}: {p} is not a text file (not UTF-8 at byte {e.start}); write one source index "
                        "per line, or a JSON list.") from None
    try:
        if p.suffix == ".json":
            data = json.loads(text)
            return int_list(f"a JSON list of source indices in {p}", minimum=0)(data, where)
        rows = [ln.split("#", 1)[0].split() for ln in text.splitlines()]
        return tuple(int(r[0]) for r in rows if r)
    except (ValueError, json.JSONDecodeError) as e:
        raise UserError(f"{where}: {p} is not a label map ({e}); write one source index per line "
                        "(optionally followed by the class name), or a JSON list of indices.") from None


@dataclass(frozen=True)
class Key:
    default: Any
    check: Callable[[Any, str], Any]


@dataclass(frozen=True)
class OpSpec:
    """One rule op: its own keys, its shape plan, the kernel that applies it, and its `from`/`to` form."""

    name: str
    plan: Callable[..., dict[str, Any]]  # (rule, source names, shapes, target, target shape, part) -> kernel args
    keys: Mapping[str, Key] = field(default_factory=dict)
    kernel: str = ""  # the op_kernels.KERNELS entry ('' = the op's own name)
    many_from: bool = False  # `from` is a list of regexes, one per part (concat)
    many_to: bool = False  # `to` is a list of templates, one per part (split)
    finish: Callable[[dict[str, Any], str, int], dict[str, Any]] | None = None  # cross-key checks: (args, where, targets)

    @property
    def kernel_name(self) -> str:
        return self.kernel or self.name


# --- shape plans ----------------------------------------------------------------------------------

def _fmt(names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> str:
    return ", ".join(f"{n} {tuple(s)}" for n, s in zip(names, shapes))


def _dim(rule: Any, d: int, ndim: int, names: Sequence[str], shapes: Sequence[tuple[int, ...]], key: str = "dim") -> int:
    if not -ndim <= d < ndim:
        raise UserError(f"{rule.where}.{key}: dim {d} does not exist in {_fmt(names, shapes)} ({ndim}-D).")
    return d % ndim


def _result_error(rule: Any, what: str, names: Sequence[str], shapes: Sequence[tuple[int, ...]],
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


def _finish_split(args: dict[str, Any], where: str, n_targets: int) -> dict[str, Any]:
    sizes = args.get("sizes")
    if sizes is not None and len(sizes) != n_targets:
        raise UserError(f"{where}.sizes: {list(sizes)} has {len(sizes)} sizes for {n_targets} targets in `to`; "
                        "give one size per target.")
    return args


def _finish_select(args: dict[str, Any], where: str, n_targets: int) -> dict[str, Any]:
    if "label_map" in args:
        if "indices" in args:
            raise UserError(f"{where}: give either indices or label_map, not both.")
        args["indices"] = args.pop("label_map")
    if "indices" not in args:
        raise UserError(f"{where}: op select needs `indices: [source rows in target order]` or `label_map: <file>`.")
    return args


DIM = Key(0, an_int())
OPS: dict[str, OpSpec] = {spec.name: spec for spec in (
    OpSpec("rename", plan_rename, kernel="copy"),
    OpSpec("concat", plan_concat, {"dim": DIM}, many_from=True),
    OpSpec("split", plan_split, {"dim": DIM, "sizes": Key(None, int_list("the size of each part along `dim`", 1))},
           many_to=True, finish=_finish_split),
    OpSpec("transpose", plan_transpose, {"dims": Key((0, 1), two_dims)}),
    OpSpec("reshape", plan_reshape, {"shape": Key(None, int_list("the target shape; -1 once for 'the rest'", -1))}),
    OpSpec("adapt_channels", plan_adapt_channels),
    OpSpec("select", plan_select, {"dim": DIM, "indices": Key(None, int_list("source rows to keep, in target order", 0)),
                                   "label_map": Key(None, read_label_map)}, finish=_finish_select),
    OpSpec("interpolate", plan_interpolate, {"dims": Key(None, int_list("the dims to resize")), "mode": Key(None, a_mode),
                                             "grid": Key(False, a_bool), "prefix_tokens": Key(0, an_int(0)),
                                             "align_corners": Key(False, a_bool)}),
)}


def plan_op(rule: Any, names: Sequence[str], shapes: Sequence[tuple[int, ...]], target: str,
            tshape: tuple[int, ...], part: int = 0) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """(kernel name, its arguments) turning the tensors `names` into `target`; shape errors raise here."""
    spec = OPS[rule.op]
    args = spec.plan(rule, list(names), [tuple(s) for s in shapes], target, tuple(tshape), part)
    return spec.kernel_name, tuple(sorted(args.items()))
