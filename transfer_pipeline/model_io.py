"""What goes into the model and what comes out: batches as `(x, y)` or dicts, and `model.output`.

A batch is either an `(input, target)` pair or a dict (tokenized text): the target is taken out
under `data.target_key` (default `labels`) and the other keys are the model's keyword arguments,
as with a Hugging Face model. What the model returns may be a tensor, a tuple, a dict or an
object with attributes; `model.output` (an index or a name) says where the logits are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .errors import UserError

Inputs = Any  # a tensor, or a dict of keyword arguments


def split_batch(batch: Any, target_key: str) -> tuple[Inputs, Any]:
    """(inputs, target) of a collated batch, or a UserError saying what the items should be."""
    if isinstance(batch, Mapping):
        if target_key not in batch:
            raise UserError(f"data: the items are dicts with keys {sorted(batch)} and no target under "
                            f"data.target_key={target_key!r}. Set data.target_key to the key of the target.")
        return {k: v for k, v in batch.items() if k != target_key}, batch[target_key]
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    kind = f"a {type(batch).__name__}" + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
    raise UserError(f"data: a batch is {kind}; the items must be (input, target) pairs or dicts with the target "
                    f"under data.target_key (now {target_key!r}) and the model's keyword arguments beside it.")


def to_device(x: Inputs, device: torch.device, channels_last: bool = False) -> Inputs:
    if isinstance(x, Mapping):
        return {k: to_device(v, device, channels_last) for k, v in x.items()}
    if isinstance(x, torch.Tensor):
        x = x.to(device, non_blocking=True)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
    return x


def call(model: Any, x: Inputs) -> Any:
    return model(**x) if isinstance(x, Mapping) else model(x)


def pick_output(out: Any, spec: int | str | None) -> torch.Tensor:
    """The logits in what the model returned, by `model.output`; a UserError when they are not there.
    Without `model.output`: a tensor, or the `logits` of a dict or an output object (Hugging Face's)."""
    if spec is None:
        if isinstance(out, torch.Tensor):
            return out
        logits = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
        if isinstance(logits, torch.Tensor):  # a Hugging Face output, or a dict that names them: nothing to ask
            return logits
        raise UserError(f"model: returns {describe(out)}, not a tensor of logits. Say where the logits are with "
                        f"model.output={suggest(out)}.")
    try:
        picked = (out[spec] if isinstance(spec, int) or isinstance(out, Mapping) else getattr(out, spec))
    except (IndexError, KeyError, AttributeError, TypeError):
        raise UserError(f"model.output={spec!r}: the model returns {describe(out)}, which has no {spec!r}. "
                        f"Try model.output={suggest(out)}.") from None
    if not isinstance(picked, torch.Tensor):
        raise UserError(f"model.output={spec!r}: that part of what the model returns is {describe(picked)}, not a "
                        "tensor of logits.")
    return picked


def _fields(out: Any) -> list[str]:
    if isinstance(out, Mapping):
        return [str(k) for k in out]
    if dataclasses.is_dataclass(out):
        return [f.name for f in dataclasses.fields(out)]
    return [k for k in vars(out) if not k.startswith("_")] if hasattr(out, "__dict__") else []


def describe(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)} ({', '.join(type(v).__name__ for v in out[:4])})"
    names = _fields(out)
    kind = "keys" if isinstance(out, Mapping) else "attributes"
    return f"a {type(out).__name__}" + (f" ({kind}: {', '.join(names[:8])})" if names else "")


def suggest(out: Any) -> str:
    """The likeliest model.output for `out`: `logits` when it has them, else the first tensor in it."""
    if isinstance(out, torch.Tensor):
        return "null (it returns a tensor)"
    if isinstance(out, Sequence) and not isinstance(out, str):
        return str(next((i for i, v in enumerate(out) if isinstance(v, torch.Tensor)), 0))
    names = _fields(out)
    return "logits" if "logits" in names or not names else names[0]


def finite(x: Inputs) -> bool:
    """No NaN or inf in the floating-point tensors of `x` (a tensor or a dict of them)."""
    if isinstance(x, Mapping):
        return all(finite(v) for v in x.values())
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return bool(torch.isfinite(x).all())
    return True


def shape_text(x: Inputs) -> str:
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{k}: {shape_text(v)}" for k, v in x.items()) + "}"
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def first_rows(x: Inputs, n: int) -> Inputs:
    if isinstance(x, Mapping):
        return {k: first_rows(v, n) for k, v in x.items()}
    return x[:n] if isinstance(x, torch.Tensor) else x


# what torch says when an input does not fit a layer (so blaming the input's shape is right)
SHAPE_WORDS = ("shape", "size", "channels", "dimension", "mat1 and mat2", "must match", "expected input",
               "out of range", "Expected 3D", "Expected 4D", "input type", "dtype")


def is_shape_error(e: BaseException) -> bool:
    """Whether a forward's exception says an input did not fit (else it is a fault inside the model)."""
    return isinstance(e, (RuntimeError, ValueError, IndexError)) and any(w in str(e) for w in SHAPE_WORDS)


def raised_at(e: BaseException) -> str:
    """`file:line (function)` of the innermost frame outside torch: where the model's own code raised."""
    import traceback

    frames = [f for f in traceback.extract_tb(e.__traceback__) if "/torch/" not in f.filename.replace("\\", "/")]
    if not frames:
        return "inside torch"
    f = frames[-1]
    return f"{f.filename}:{f.lineno} ({f.name})"


def forward_fault(e: BaseException, what: str) -> str:
    """The message for a forward that raised for another reason than the input's shape: the model's own error."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    return (f"{what}: its forward raised {type(e).__name__}: {first}, at {raised_at(e)}. That is an error in the "
            "model's code, not in the data's shape: fix the model (or give a model that runs).")
