"""Apply a LoadPlan: put each planned source tensor into its target, initialise only what was not loaded.

Two paths, one result:

- fast (the target was built with `build_model(meta=True)`): loaded tensors are *assigned*
  (`load_state_dict(assign=True)`), so a tensor memory-mapped from the checkpoint becomes the
  parameter without a copy; it is cast or moved once only where dtype or device differ. The
  parameters the plan does not fill are created on the device and initialised by their own
  module's `reset_parameters()`, then by those of its parents (children first, as constructors run).
- normal (the target was built with its full random init): loaded tensors are copied in.

The fast path falls back to the normal one (a fresh normal build, same seed) when an unloaded
parameter cannot be initialised safely: its module has no `reset_parameters()`, the reset leaves
it uninitialised (checked: it is NaN-filled first), or it is a buffer computed from parameters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..errors import UserError
from ..names import join_name, parents, split_name
from ..tensor_meta import TensorMeta, meta_of
from .plan import LoadPlan, TargetInfo
from .op_kernels import apply_op
from ..sources.mapped_pages import drop_mapped_pages
from ..sources.read import SourceWeights

log = logging.getLogger(__name__)


class CannotInitialise(Exception):
    """The fast path cannot initialise an unloaded tensor the way the model's constructor would."""


def target_meta(model: nn.Module) -> dict[str, TensorMeta]:
    """Names, shapes and dtypes of everything a state dict of `model` holds (params + buffers; meta is fine)."""
    return meta_of(model.state_dict(keep_vars=True))


def describe_target(model: nn.Module) -> TargetInfo:
    """What the plan needs beyond names and shapes: buffers, tied names, BatchNorm layers (meta models too)."""
    state = model.state_dict(keep_vars=True)
    buffers = frozenset(n for n, _ in model.named_buffers(remove_duplicate=False) if n in state)
    by_tensor: dict[int, list[str]] = {}
    for name, tensor in state.items():
        by_tensor.setdefault(id(tensor), []).append(name)
    aliases = tuple(tuple(names) for names in by_tensor.values() if len(names) > 1)
    batchnorm = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            affine = tuple(join_name(name, p) for p, _ in module.named_parameters(recurse=False))
            stats = tuple(join_name(name, b) for b, _ in module.named_buffers(recurse=False) if join_name(name, b) in state)
            batchnorm.append((name, affine, stats))
    return TargetInfo(buffers, aliases, tuple(batchnorm))


def is_on_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in model.parameters()) or any(t.is_meta for t in model.buffers())


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


CHUNK = 1 << 22  # elements checked at a time: the check's own temporaries stay a few MB on any tensor


def _narrows(source: torch.dtype, target: torch.dtype) -> bool:
    return source.is_floating_point and target.is_floating_point and torch.finfo(source).max > torch.finfo(target).max


def _bad_values(t: torch.Tensor, target: torch.dtype, nonfinite_wanted: bool, overflow_wanted: bool) -> tuple[bool, bool]:
    """(holds NaN/inf, holds finite values that become inf in `target`), read in chunks, stopping when known."""
    if not t.is_floating_point() or t.numel() == 0:
        return False, False
    overflow_wanted = overflow_wanted and _narrows(t.dtype, target)
    if not (nonfinite_wanted or overflow_wanted):
        return False, False
    limit = torch.finfo(target).max if overflow_wanted else None
    flat = t.reshape(-1)
    nonfinite = overflow = False
    wide = torch.float64 if t.dtype == torch.float64 else torch.float32
    for i in range(0, flat.numel(), CHUNK):
        part = flat[i:i + CHUNK]
        if limit is None and bool(torch.isfinite(part.sum(dtype=wide))):
            continue  # a NaN or inf anywhere makes the sum one: a finite sum clears the chunk in one pass
        finite = torch.isfinite(part)
        nonfinite = nonfinite or not bool(finite.all())
        if limit is not None:
            overflow = overflow or bool((part.abs() > limit).logical_and_(finite).any())
        if (nonfinite or not nonfinite_wanted) and (overflow or limit is None):
            break
    return nonfinite, overflow


def check_values(plan: LoadPlan, source: SourceWeights, dtypes: Mapping[str, torch.dtype],
                 allow_nonfinite: bool = False, allow_lossy_cast: bool = False) -> None:
    """NaN/inf in what is loaded, and floats too large for the target's dtype, are errors naming the tensors.

    Reads each loaded source tensor once (from the memory map) before anything is written; with
    `allow_nonfinite` only the ones cast to a narrower float are read (for overflow).
    """
    if allow_nonfinite and allow_lossy_cast:
        return
    nonfinite, overflow = [], []
    for entry in plan.entries:
        for name in entry.sources:
            bad, big = _bad_values(source.get(name), dtypes[entry.target], not allow_nonfinite, not allow_lossy_cast)
            if bad:
                nonfinite.append(name)
            if big:
                overflow.append(f"{name} ({entry.source_dtype} -> {entry.target_dtype})")
    drop_mapped_pages(source.all_files)  # read through the map: its pages as a fresh process finds them
    if nonfinite:
        names = list(dict.fromkeys(nonfinite))
        raise UserError(f"source.allow_nonfinite: {len(names)} loaded tensor(s) hold NaN or inf: "
                        f"{', '.join(names[:10])}{' ...' if len(names) > 10 else ''}. The checkpoint is broken "
                        "(or was saved mid-divergence); training from it fails at the first step. Exclude them "
                        "(mapping.exclude), or set source.allow_nonfinite=true to load them anyway.")
    if overflow:
        raise UserError(f"source.allow_lossy_cast: {len(overflow)} tensor(s) hold values too large for the target's "
                        f"dtype and would become inf: {', '.join(overflow[:10])}. Keep the target in the source's "
                        "precision, or set source.allow_lossy_cast=true.")


def planned_tensors(plan: LoadPlan, source: SourceWeights, device: torch.device | None = None,
                    dtypes: Mapping[str, torch.dtype] | None = None) -> dict[str, torch.Tensor]:
    """{target: tensor} made by each entry's op, cast/moved once where needed, never two sharing memory."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for entry in plan.entries:
        t = apply_op(entry.op, [source.get(s) for s in entry.sources], entry.args)
        dtype = dtypes[entry.target] if dtypes else _dtype(entry.target_dtype)
        t = t.to(device=device or t.device, dtype=dtype).contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel():  # e.g. one source copied to two targets: each needs its own memory
            t = t.clone()
            ptr = t.untyped_storage().data_ptr()
        seen.add(ptr)
        out[entry.target] = t
    return out


@torch.no_grad()
def copy_weights(model: nn.Module, plan: LoadPlan, source: SourceWeights) -> None:
    """Normal path: copy what the plan says into the model's (initialised) tensors.

    Writing into the existing tensors (rather than load_state_dict) keeps parameters, their
    `requires_grad` and any optimizer references intact, and casts dtype in the same step.
    """
    state: Mapping[str, torch.Tensor] = model.state_dict(keep_vars=True)
    for entry in plan.entries:
        state[entry.target].copy_(apply_op(entry.op, [source.get(s) for s in entry.sources], entry.args))


def _owner(model: nn.Module, name: str) -> tuple[str, nn.Module, str]:
    mod_name, leaf = split_name(name)
    return mod_name, model.get_submodule(mod_name), leaf


def _reset_fn(module: nn.Module) -> Callable[[], None] | None:
    for attr in ("reset_parameters", "_reset_parameters"):
        fn = getattr(module, attr, None)
        if callable(fn):
            return fn
    return None


@torch.no_grad()
def assign_weights(model: nn.Module, plan: LoadPlan, source: SourceWeights, device: torch.device) -> None:
    """Fast path: the model's parameters are on meta; afterwards everything is real and on `device`.

    Raises CannotInitialise (before touching the model where it can tell) when an unloaded
    tensor has no safe initialisation; the caller then builds the model normally.
    """
    loaded = set(plan.loaded)
    aliases: dict[int, list[str]] = {}  # tied parameters: one Parameter under several names
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
    groups = list(aliases.values())

    # 1. what must be initialised, and can it be? (nothing is changed yet)
    owners: dict[str, nn.Module] = {}  # module name -> module that directly owns an unloaded parameter
    for names in groups:
        if any(n in loaded for n in names):
            continue
        mod_name, module, _ = _owner(model, names[0])
        if _reset_fn(module) is None:
            raise CannotInitialise(f"{names[0]} is not in the plan and its module {mod_name or '<root>'} "
                                   f"({type(module).__name__}) has no reset_parameters() to initialise it")
        owners[mod_name] = module
    for name, b in model.named_buffers(remove_duplicate=False):
        if b.is_meta and name not in loaded:
            raise CannotInitialise(f"buffer {name} was made from parameters in the constructor and is not in the plan")

    # 2. materialise the unloaded parameters (NaN first: a reset that skips one shows), then run the
    # resets of their modules and of those modules' parents, children first, as the constructors did
    fresh: list[tuple[str, torch.Tensor]] = []
    for mod_name, module in owners.items():
        for leaf, p in list(module._parameters.items()):
            full = join_name(mod_name, leaf)
            if p is None or not p.is_meta or full in loaded:
                continue
            t = torch.empty_like(p, device=device)
            if t.is_floating_point() or t.is_complex():
                t.fill_(float("nan"))
            module._parameters[leaf] = nn.Parameter(t, requires_grad=p.requires_grad)
            fresh.append((full, module._parameters[leaf]))
    position = {name: i for i, (name, _) in enumerate(model.named_modules())}
    to_reset = set(owners)
    for mod_name in owners:  # e.g. MultiheadAttention's reset also zeroes its out_proj.bias
        to_reset.update(a for a in parents(mod_name) if _reset_fn(model.get_submodule(a)) is not None)
    for mod_name in sorted(to_reset, key=lambda n: (-len(n.split(".")) if n else 0, position.get(n, 0))):
        module = model.get_submodule(mod_name)
        try:
            _reset_fn(module)()  # type: ignore[misc]
        except Exception as e:  # noqa: BLE001 - a reset that mixes meta and real tensors, etc.
            raise CannotInitialise(f"{type(module).__name__}.reset_parameters() failed on a partly loaded "
                                   f"module ({type(e).__name__}: {e})") from None
    for full, t in fresh:
        if (t.is_floating_point() or t.is_complex()) and torch.isnan(t).any():
            raise CannotInitialise(f"{full}: reset_parameters() of its module does not initialise it")

    # 3. assign the loaded tensors (memory-mapped ones become the parameters as they are)
    state = model.state_dict(keep_vars=True)
    tensors = planned_tensors(plan, source, device, {k: v.dtype for k, v in state.items()})
    model.load_state_dict(tensors, strict=False, assign=True)

    # 4. tie again what the constructor tied, and bring buffers (built on CPU) to the device
    params = dict(model.named_parameters(remove_duplicate=False))
    for names in groups:
        if len(names) > 1:
            keep = params[next((n for n in names if n in loaded), names[0])]
            for n in names:
                mod_name, module, leaf = _owner(model, n)
                module._parameters[leaf] = keep
    model.to(device)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"bug: tensors left on the meta device after loading: {left[:5]}")


def target_dtypes(model: nn.Module) -> dict[str, torch.dtype]:
    return {k: v.dtype for k, v in model.state_dict(keep_vars=True).items()}


def load_model(model: nn.Module, plan: LoadPlan, source: SourceWeights | None, device: torch.device,
               rebuild: Callable[[], nn.Module], allow_nonfinite: bool = False,
               allow_lossy_cast: bool = False) -> nn.Module:
    """Load `plan` from `source` into `model` on `device`; returns the model (a rebuilt one on fallback).

    `rebuild` builds the target normally (full random init, same seed), for the fallback. The
    loaded values are checked first (`check_values`), so a refused load changes nothing.
    """
    if source is not None:
        check_values(plan, source, target_dtypes(model), allow_nonfinite, allow_lossy_cast)
    if source is not None and is_on_meta(model):
        try:
            assign_weights(model, plan, source, device)
            return model
        except CannotInitialise as e:
            log.info("Fast load not possible (%s): building the target normally and copying the weights in", e)
            model = rebuild()
    elif is_on_meta(model):
        model = rebuild()  # nothing to load: the normal build is the model
    if source is not None:
        copy_weights(model, plan, source)
    return model.to(device)
