"""`num_classes: null` in the model node: the class count comes from the data (or, in modes that read no data,
from the weights' own metadata), so `model=torchvision model.name=resnet50` needs no count typed by hand."""

from __future__ import annotations

import logging
from typing import Any

from ..errors import UserError
from ..schema import Mode
from .state import Run

log = logging.getLogger(__name__)

KEY = "num_classes"
READS_DATA = (Mode.train, Mode.eval, Mode.plan)


def wants_count(node: dict[str, Any]) -> bool:
    return KEY in node and node[KEY] is None


def wants_source(r: Run) -> bool:
    """Whether the source must be read before the model is built (its metadata names the classes)."""
    return wants_count(r.cfg.model) and r.cfg.mode not in READS_DATA


def with_class_count(r: Run, source: Any = None) -> dict[str, Any]:
    """The model node with `num_classes` filled; the data read for it is kept in `r.data` for the data step."""
    node = dict(r.cfg.model)
    if not wants_count(node):
        return node
    if not _takes_count(node):  # model=custom with a class of yours that has no num_classes: nothing to fill
        node.pop(KEY)
        return node
    if r.cfg.mode in READS_DATA:
        from ..data.datasets import build_data
        from ..data.preprocess import preset_source

        r.data = build_data(r.cfg.data, r.cfg.seed, preset_source(r.cfg.source))
        if r.data.class_names is None:
            raise UserError("model.num_classes: null means 'the data's class count', and your data does not name its "
                            "classes (data._target_ returned no class_names). Set model.num_classes=N.")
        count, origin = len(r.data.class_names), "the data's classes"
    else:
        from ..training.predict import class_names  # the metadata a training run writes with its weights

        names = class_names(getattr(source, "extra", None) or {})
        if not names:
            log.info("model.num_classes: null, mode=%s reads no data and the weights name no classes: the model's "
                     "own default is used (set model.num_classes=N to match your checkpoint's head)", r.cfg.mode.value)
            node.pop(KEY)
            return node
        count, origin = len(names), "the classes the weights were trained on"
    log.info("model.num_classes=%d (%s)", count, origin)
    r.summary["num_classes_from"] = origin
    node[KEY] = count
    return node


def _takes_count(node: dict[str, Any]) -> bool:
    """Whether the `_target_` takes `num_classes` (by name, or through **kwargs)."""
    import inspect

    from ..build import locate

    target = node.get("_target_")
    if not isinstance(target, str):
        return True
    try:
        params = inspect.signature(locate(target, "model")).parameters.values()
    except (TypeError, ValueError):
        return True  # no signature to read: pass it, and a refusal names the argument
    return any(p.name == KEY or p.kind == p.VAR_KEYWORD for p in params)
