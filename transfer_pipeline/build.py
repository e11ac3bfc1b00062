"""Build objects from `_target_` nodes (the target model, a source model) without Hydra.

Our own small instantiate: it gives messages that name the config key, the bad `_target_`
and the close names, which is what a person needs when a model name is misspelt.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from .errors import UserError, did_you_mean


def locate(path: str, where: str) -> Any:
    """Import `a.b.c.Name` (the longest importable module, then attributes)."""
    parts = path.split(".")
    if not all(parts):
        raise UserError(f"{where}._target_: {path!r} is not a dotted path; write e.g. torchvision.models.resnet18.")
    obj, i = None, len(parts)
    while i > 0:
        try:
            obj = importlib.import_module(".".join(parts[:i]))
            break
        except ModuleNotFoundError as e:
            # a module that exists but fails inside its own imports is a real error, not a typo
            if e.name is None or not ".".join(parts[:i]).startswith(e.name):
                raise
            i -= 1
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


def instantiate(node: Mapping[str, Any], where: str) -> Any:
    """Call `node['_target_']` with the other keys (nested `_target_` nodes built first)."""
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise UserError(f"{where}: needs a '_target_' (e.g. torchvision.models.resnet18) and its arguments.")
    kwargs = {k: (instantiate(v, f"{where}.{k}") if isinstance(v, Mapping) and "_target_" in v else v)
              for k, v in node.items() if k != "_target_"}
    fn = locate(str(node["_target_"]), where)
    if not callable(fn):
        raise UserError(f"{where}._target_: {node['_target_']!r} is not callable.")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        try:
            sig.bind(**kwargs)
        except TypeError as e:
            params = [p for p in sig.parameters if p not in ("self", "args", "kwargs")]
            raise UserError(f"{where}: {node['_target_']} does not take these arguments ({e}). "
                            f"It takes: {', '.join(params) or 'nothing'}.") from None
    return fn(**kwargs)


def build_model(node: Mapping[str, Any], where: str = "model"):
    """Instantiate a model node and check that it is an nn.Module."""
    from torch import nn

    model = instantiate(node, where)
    if not isinstance(model, nn.Module):
        raise UserError(f"{where}._target_: {node['_target_']} returned {type(model).__name__}, not an nn.Module.")
    return model
