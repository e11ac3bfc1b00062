"""The Python API: the loader, freezing and parameter groups from a notebook or your own script.

    import transfer_pipeline as tp
    report = tp.load_weights(model, "ckpt.pt", exclude=["fc"], on_mismatch="skip")
    print(report)                        # the table `python run.py` prints
    tp.freeze(model, trainable=["fc"])    # requires_grad, BatchNorm statistics held
    optimizer = torch.optim.AdamW(tp.param_groups(model, lr=1e-3, weight_decay=0.05))

The keyword arguments are the YAML keys with the YAML's defaults and checks: `mapping.*` and
`source.*` for the loader, `freeze.*` for `freeze`, `optim.*` for `param_groups`; a bad value
raises the same `UserError`. The pipeline's load step runs `plan_report` too, so a load from
Python and one from `python run.py` are the same sequence: read -> choose nested key -> plan.
Selectors may name the model's parts: `exclude=["@head"]`, `trainable=["@head", "@blocks.-1"]`
(model_parts.py finds them in the model you pass).
"""

from __future__ import annotations

from dataclasses import replace
from os import PathLike
from typing import Any

from torch import nn

from .errors import UserError
from .mapping.apply import (
    CannotInitialise,
    assign_weights,
    check_values,
    copy_weights,
    describe_target,
    is_on_meta,
    target_dtypes,
    target_meta,
)
from .mapping.nested import choose_nested
from .mapping.plan import plan_load
from .mapping.report import LoadReport
from .model_parts import expand_freeze, expand_mapping, expand_optim, model_parts, uses_parts
from .schema.options import build_node, load_options
from .files import resolve_path
from .schema import FreezeConfig, MappingConfig, OptimConfig, SourceConfig
from .sources.hub import is_hub_path
from .sources.read import SourceWeights, read_object, read_path, read_source
from .tuning.batchnorm import hold_bn_modes
from .tuning.freezing import FreezePlan, model_blocks, plan_freezing, set_requires_grad
from .tuning.param_groups import build_groups, no_decay_names, torch_param_groups


def open_source(source: Any, options: SourceConfig) -> SourceWeights:
    """A path (file, folder, shard index, `pkg://...`), a state dict, an nn.Module, or SourceWeights."""
    if isinstance(source, SourceWeights):
        return source
    if isinstance(source, str) and is_hub_path(source):  # hf://org/name, timm://name.tag: from the hub cache
        return read_source(replace(options, path=source))
    if isinstance(source, (str, PathLike)):
        return read_path(resolve_path(str(source)), options.key, options.trust_pickle, str(source))
    if isinstance(source, (dict, nn.Module)) or hasattr(source, "items"):
        return read_object(source, options.key)
    raise UserError(f"source: a {type(source).__name__} is not a source; give a checkpoint path, a state dict "
                    "or an nn.Module.")


def plan_report(model: nn.Module, weights: SourceWeights | None, mapping: MappingConfig,
                prefixes: SourceConfig) -> tuple[LoadReport, SourceWeights | None]:
    """The load sequence shared by the API and the pipeline: choose the nested key, plan (no tensor data).

    Returns the report (not yet checked against `mapping.expect`: the pipeline writes it first)
    and the chosen source weights.
    """
    target = target_meta(model)
    weights = choose_nested(weights, target) if weights is not None else None
    plan = plan_load(weights.meta if weights else {}, target, mapping, prefixes, describe_target(model))
    report = LoadReport(plan, target, weights.meta if weights else None, weights.description if weights else None,
                        type(model).__name__, list(weights.notes) if weights else [])
    return report, weights


def plan_weights(model: nn.Module, source: Any, **options: Any) -> LoadReport:
    """What `load_weights` would do, reading no tensor data. `options`: mapping.* and source.* keys."""
    mapping, prefixes = load_options(**options)
    mapping = expand_mapping(mapping, model_parts(model)) if uses_parts(mapping) else mapping
    report, _ = plan_report(model, open_source(source, prefixes), mapping, prefixes)
    report.check(mapping.expect)
    return report


def load_weights(model: nn.Module, source: Any, **options: Any) -> LoadReport:
    """Load `source` into `model` in place (planned, checked, then copied); returns the report.

    A model built on the meta device gets the loaded tensors assigned (no copy) and everything
    else initialised by its modules' `reset_parameters()` on the CPU.
    """
    mapping, prefixes = load_options(**options)
    mapping = expand_mapping(mapping, model_parts(model)) if uses_parts(mapping) else mapping
    report, weights = plan_report(model, open_source(source, prefixes), mapping, prefixes)
    report.check(mapping.expect)
    check_values(report.plan, weights, target_dtypes(model), prefixes.allow_nonfinite, prefixes.allow_lossy_cast)
    if is_on_meta(model):
        import torch

        try:
            assign_weights(model, report.plan, weights, torch.device("cpu"))
        except CannotInitialise as e:
            raise UserError(f"load_weights: the model is on the meta device and {e}; build it normally "
                            "(not under torch.device('meta')) and load again.") from None
    else:
        copy_weights(model, report.plan, weights)
    return report


def freeze(model: nn.Module, **options: Any) -> FreezePlan:
    """Apply `freeze.*` keys (trainable, frozen, until, bn, bn_overrides) to `model`; returns the plan.

    Frozen parameters get `requires_grad=False` and no gradient. BatchNorm layers whose mode is
    eval or frozen (`bn: auto`, the default: those whose parameters are all frozen) stay in eval
    mode through your loop's `model.train()`, so their statistics do not change.
    """
    not_here = [k for k in ("schedule", "gradual") if k in options]
    if not_here:
        raise UserError(f"freeze({not_here[0]}=...): schedules need the pipeline's training loop; in your own loop "
                        "call freeze() again when you unfreeze (the optimizer already holds every parameter).")
    cfg = build_node(FreezeConfig, options, "freeze.")
    cfg = expand_freeze(cfg, model_parts(model)) if uses_parts(cfg) else cfg
    plan = plan_freezing(model, cfg, epochs=1)
    set_requires_grad(model, plan.trainable)
    hold_bn_modes(model, plan.bn_modes)
    return plan


def param_groups(model: nn.Module, **options: Any) -> list[dict[str, Any]]:
    """Optimizer parameter groups from `optim.*` keys (lr, weight_decay, groups, layer_decay, no_decay, name).

    Every parameter is in exactly one group, frozen ones included (they get no update while
    frozen); pass the list to any torch optimizer. Blocks for `layer_decay` are `python run.py`'s
    default `freeze.blocks`: the model's stages and then its head where model_parts.py recognises
    them (a ResNet: conv1+bn1, layer1..layer4, fc), else the top-level modules.
    """
    cfg = build_node(OptimConfig, options, "optim.")
    parts = model_parts(model)
    cfg = expand_optim(cfg, parts)
    names = [n for n, _ in model.named_parameters()]
    groups = build_groups(names, cfg, (), model_blocks(names, parts.default_blocks()), no_decay_names(model, cfg))
    return torch_param_groups(model, groups, cfg)
