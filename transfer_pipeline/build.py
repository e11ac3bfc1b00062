"""Build objects from `_target_` nodes (the target model, a source model) without Hydra.

Our own small instantiate, with Hydra's semantics (`_args_`, nested nodes in lists and dicts,
`_partial_`): it gives messages that name the config key, the bad `_target_` and the close
names, which is what a person needs when a model name is misspelt.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .errors import UserError, did_you_mean

log = logging.getLogger(__name__)


def locate(path: str, where: str) -> Any:
    """Import `a.b.c.Name` (the longest importable module, then attributes)."""
    parts = path.split(".")
    if not all(parts):
        raise UserError(f"{where}._target_: {path!r} is not a dotted path; write e.g. torchvision.models.resnet18.")
    obj, i = None, len(parts)
    while i > 0:
        module = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module)
            break
        except ModuleNotFoundError as e:
            if e.name is not None and module.startswith(e.name):
                i -= 1  # this prefix is not a module (yet): try a shorter one
                continue
            raise _import_failed(where, path, e) from None  # installed, but one of its own imports is missing
        except Exception as e:  # noqa: BLE001 - the module exists and fails while importing: that is the error
            raise _import_failed(where, path, e) from None
    if obj is None:
        raise UserError(f"{where}._target_: cannot import {path!r}: no module {parts[0]!r}. "
                        "Write the full dotted path, e.g. torchvision.models.resnet18.")
    for j in range(i, len(parts)):
        if not hasattr(obj, parts[j]):
            owner = ".".join(parts[:j])
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise UserError(f"{where}._target_: {owner!r} has no {parts[j]!r}.{did_you_mean(parts[j], names)}")
        obj = getattr(obj, parts[j])
    return obj


def _import_failed(where: str, target: str, e: BaseException) -> UserError:
    """A module that is there but fails to import: say so with its own error (not 'no such module')."""
    import traceback

    frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    at = f" ({frame.filename}:{frame.lineno})" if frame else ""
    return UserError(f"{where}._target_: {target!r}: importing it failed with {type(e).__name__}: {e}{at}. The "
                     "module is there but raises while it is imported; fix that import (or install what it needs).")


RESERVED = ("_target_", "_args_", "_partial_", "_convert_", "_recursive_")
_UNEXPECTED = re.compile(r"got an unexpected keyword argument '(\w+)'")


def instantiate(node: Any, where: str) -> Any:
    """Hydra's instantiate semantics, with messages that name the config key.

    `_target_` is called with the node's other keys as keyword arguments and `_args_` as
    positional ones; nodes inside them (in dicts and lists too) are built first, depth first;
    `_partial_: true` returns a `functools.partial` instead of calling.
    """
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise UserError(f"{where}: needs a '_target_' (e.g. torchvision.models.resnet18) and its arguments.")
    args = node.get("_args_", [])
    if not isinstance(args, (list, tuple)):
        raise UserError(f"{where}._args_: a list of positional arguments, got {type(args).__name__}.")
    build = _build if node.get("_recursive_", True) else (lambda v, w: v)  # `_recursive_: false`: children as given
    args = [build(v, f"{where}._args_[{i}]") for i, v in enumerate(args)]
    kwargs = {k: build(v, f"{where}.{k}") for k, v in node.items() if k not in RESERVED}
    partial = node.get("_partial_", False)
    if not isinstance(partial, bool):
        raise UserError(f"{where}._partial_: true or false, got {partial!r}.")
    fn = locate(str(node["_target_"]), where)
    if not callable(fn):
        raise UserError(f"{where}._target_: {node['_target_']!r} is not callable.")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        try:
            (sig.bind_partial if partial else sig.bind)(*args, **kwargs)
        except TypeError as e:
            params = [p for p in sig.parameters if p not in ("self", "args", "kwargs")]
            raise UserError(f"{where}: {node['_target_']} does not take these arguments ({e}). "
                            f"It takes: {', '.join(params) or 'nothing'}.") from None
    if partial:
        return functools.partial(fn, *args, **kwargs)
    try:
        return fn(*args, **kwargs)
    except TypeError as e:  # a **kwargs builder (torchvision's, timm's) passes them to a class that refuses one
        refused = _UNEXPECTED.search(str(e))
        if refused is None or refused.group(1) not in kwargs:
            raise
        raise UserError(f"{where}: {node['_target_']} does not take these arguments (got an unexpected keyword "
                        f"argument '{refused.group(1)}', refused by {str(e).split('(')[0].strip() or 'it'}).") from None


def _build(value: Any, where: str) -> Any:
    """Nodes with a `_target_` anywhere inside dicts and lists are built; everything else is passed as it is."""
    if isinstance(value, Mapping):
        if "_target_" in value:
            return instantiate(value, where)
        return {k: _build(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_build(v, f"{where}[{i}]") for i, v in enumerate(value))
    return value


def build_model(node: Mapping[str, Any], where: str = "model", meta: bool = False):
    """Instantiate a model node and check that it is an nn.Module.

    `meta=True`: every parameter is created on the meta device (shape and dtype, no memory, no
    random init); buffers stay real, so BatchNorm statistics and non-persistent buffers keep the
    values the constructor gave them. loading.py then assigns the loaded tensors and initialises
    only the rest. A model whose constructor cannot run that way is built normally.
    """
    from torch import nn

    from .schema import MODEL_OUTPUT_KEY

    node = {k: v for k, v in node.items() if k != MODEL_OUTPUT_KEY}  # ours (where the logits are), not an argument
    if meta:
        try:
            with parameters_on_meta() as watch:
                model = instantiate(node, where)
            if watch.loaded_into is not None:  # e.g. resnet18(weights=...): its weights would be lost on meta
                raise RuntimeError(f"the constructor copies data into parameter {watch.loaded_into}")
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - e.g. a constructor that computes with its parameters
            log.info("%s: cannot build on the meta device (%s: %s); building it normally", where, type(e).__name__, e)
            model = instantiate(node, where)
    else:
        model = instantiate(node, where)
    if not isinstance(model, nn.Module):
        raise UserError(f"{where}._target_: {node['_target_']} returned {type(model).__name__}, not an nn.Module.")
    return model


class _Watch:
    loaded_into: str | None = None  # a meta parameter the constructor copied real data into


@contextmanager
def parameters_on_meta() -> Iterator[_Watch]:
    """While active, parameters that modules register go to the meta device (buffers stay real).

    Works at `nn.Module.register_parameter`, which every `self.x = nn.Parameter(...)` goes
    through: the constructor's own init then runs on meta tensors and costs nothing. Only plain
    `nn.Parameter`s move; subclasses (lazy or quantised parameters) stay as they are. The yielded
    watch notes a `copy_` of real data into a meta tensor (a constructor that loads weights, as
    `load_state_dict` does), which the caller must not lose.
    """
    import torch
    from torch import nn
    from torch.overrides import TorchFunctionMode

    watch = _Watch()

    class CopyIntoMeta(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if (func is torch.Tensor.copy_ and watch.loaded_into is None and len(args) > 1
                    and isinstance(args[0], torch.Tensor) and args[0].is_meta
                    and isinstance(args[1], torch.Tensor) and not args[1].is_meta):
                watch.loaded_into = f"of shape {tuple(args[0].shape)}"
            return func(*args, **(kwargs or {}))

    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: Any) -> None:
        if type(param) is nn.Parameter and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        with warnings.catch_warnings(record=True) as caught, CopyIntoMeta():
            warnings.simplefilter("always")
            yield watch
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]
    for w in caught:  # load_state_dict into meta parameters warns (and is a no-op): that is a load too
        if "copying from a non-meta parameter" in str(w.message):
            watch.loaded_into = watch.loaded_into or str(w.message).split(":", 1)[0].removeprefix("for ")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
