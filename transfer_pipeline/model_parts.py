"""`@head` and `@blocks`: the target model's classifier and stages, found once per run.

`model_parts(model)` looks at the built model (structure only: a model on the meta device will
do) and returns module names; `expand_mapping` / `expand_freeze` / `expand_optim` replace every
`@...` selector of those config nodes by the names before any stage sees them.

Where they come from, first rule that applies:

    head    timm: get_classifier() (else pretrained_cfg["classifier"]); Hugging Face: classifier,
            score, qa_outputs, ...; torchvision: fc, classifier, heads, head; else the last layer
            with parameters (a Linear or Conv, not a norm). A head that is a container (vgg's
            `classifier`, mobilenet's `classifier`, vit's `heads`) is its last Linear/Conv, so the
            pretrained layers before it stay pretrained.
    blocks  timm: feature_info's modules; layer1..layer4 (ResNets); the children of the largest
            ModuleList / Sequential of repeated layers that hold attention, or that is called
            stages / layers / layer / blocks / h (transformers); else the top-level modules.

Recognised stages (every rule but the last) become blocks like this: parameters before the first
stage are the stem, block 0 (`conv1+bn1`, a transformer's embeddings); parameters between two
stages join the next one (a downsample); parameters after the last stage (a final norm, a pooler)
join the last one. The head is never in a block.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from .errors import UserError
from .names import group_by_component, join_name
from .schema import FreezeConfig, MappingConfig, OptimConfig
from .selectors import is_part, parse_part

HF_HEADS = ("classifier", "score", "qa_outputs", "lm_head", "cls", "head", "heads")  # transformers' task heads
TORCHVISION_HEADS = ("fc", "classifier", "heads", "head")
REPEATED_NAMES = ("stages", "layers", "layer", "blocks", "h")  # containers of repeated layers, by their usual names


@dataclass(frozen=True)
class ModelParts:
    """Module (or parameter) names: `head` the classifier, `blocks` the stages stem -> top, head excluded."""

    model: str  # the model's class, for messages
    head: tuple[str, ...]  # empty: none found (`no_head` says why)
    blocks: tuple[tuple[str, ...], ...]
    head_from: str = ""  # how the head was found
    blocks_from: str = "top-level modules"  # how the blocks were found
    no_head: str = ""
    recognised: bool = False  # blocks from the model's own stages (not the top-level fallback)

    def expand(self, selector: str, where: str) -> list[list[str]]:
        """`@head` -> [head names]; `@blocks` -> every block; `@blocks.N` -> [that block]."""
        part, index = parse_part(selector, where)
        if part == "head":
            if not self.head:
                raise UserError(f"{where}: {selector!r}: {self.no_head} Name the classifier yourself instead of @head, "
                                f"e.g. {where.rsplit('[', 1)[0] if where.endswith(']') else where}=[fc] (module names: print(model), or python -m "
                                "transfer_pipeline.inspect on a checkpoint of it).")
            return [list(self.head)]
        if index is None:
            return [list(b) for b in self.blocks]
        if not -len(self.blocks) <= index < len(self.blocks):
            raise UserError(f"{where}: {selector!r}: {self.model} has {len(self.blocks)} block(s) "
                            f"({self.describe_blocks()}), "
                            f"so N in @blocks.N goes from 0 to {len(self.blocks) - 1} (or -1 to -{len(self.blocks)}).")
        return [list(self.blocks[index])]

    def names(self, selectors: Sequence[str] | None, where: str) -> list[str] | None:
        """A selector list with every `@...` replaced by its names (flat, order kept, duplicates dropped)."""
        if selectors is None:
            return None
        out: list[str] = []
        for i, sel in enumerate(selectors):
            got = [n for block in self.expand(sel, f"{where}[{i}]") for n in block] if is_part(sel) else [sel]
            out += [n for n in got if n not in out]
        return out

    def describe_blocks(self) -> str:
        return ", ".join("+".join(b) for b in self.blocks) or "none"

    def describe(self) -> str:
        head = f"{', '.join(self.head)} ({self.head_from})" if self.head else f"none ({self.no_head.rstrip('.')})"
        return f"Model parts of {self.model}: @head = {head}; @blocks = {self.describe_blocks()} ({self.blocks_from})"

    def to_dict(self) -> dict[str, Any]:
        return {"head": list(self.head), "blocks": [list(b) for b in self.blocks], "head_from": self.head_from,
                "blocks_from": self.blocks_from}

    def default_blocks(self) -> list[list[str]] | None:
        """`freeze.blocks` when unset: the recognised blocks and the head last; None: the top-level modules."""
        if not self.recognised:
            return None
        return [list(b) for b in self.blocks] + ([list(self.head)] if self.head else [])


# --- finding them ---------------------------------------------------------------------------------------

def model_parts(model: Any) -> ModelParts:
    """The head and the blocks of `model` (an nn.Module), from its structure alone."""
    params = [n for n, _ in model.named_parameters()]
    modules = dict(model.named_modules())
    head, head_from, no_head = _find_head(model, modules, params)
    stages, blocks_from = _find_stages(model, modules, params, head)
    if stages:
        blocks = _stage_blocks(model, params, stages, head)
    else:
        blocks = _top_level_blocks(model, params, head)
    return ModelParts(type(model).__name__, tuple(head), tuple(tuple(b) for b in blocks), head_from,
                      blocks_from if stages else "top-level modules", no_head, bool(stages))


def _has_params(name: str, params: Sequence[str]) -> bool:
    return any(p.startswith(name + ".") or p == name for p in params)


def _is_layer(module: Any) -> bool:
    """A layer that can produce a model's outputs: a Linear or a Conv (HF's Conv1D too)."""
    from torch import nn

    return isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) or type(module).__name__ == "Conv1D"


def _last_layer(name: str, modules: dict[str, Any], params: Sequence[str]) -> str:
    """A head container's last parameterised Linear/Conv (registration order); a layer itself stays."""
    inner = [n for n, m in modules.items() if n.startswith(name + ".") and _is_layer(m) and _has_params(n, params)]
    return inner[-1] if inner and not _is_layer(modules[name]) else name


def _find_head(model: Any, modules: dict[str, Any], params: Sequence[str]) -> tuple[list[str], str, str]:
    """(names, how found, why none)."""
    kind = type(model).__module__.split(".")[0]
    if hasattr(model, "pretrained_cfg") and callable(getattr(model, "get_classifier", None)):  # timm
        try:
            got = model.get_classifier()
        except Exception:  # noqa: BLE001 - a model's own method: fall back to its config
            got = None
        found = [n for m in (got if isinstance(got, (tuple, list)) else (got,))
                 for n, mod in modules.items() if m is not None and mod is m and n]
        how = "timm get_classifier()"
        if not any(_has_params(n, params) for n in found):
            cfg_head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
            found = [cfg_head] if isinstance(cfg_head, str) else list(cfg_head or ())
            how = 'timm pretrained_cfg["classifier"]'
        found = [_last_layer(n, modules, params) for n in found if n in modules and _has_params(n, params)]
        if found:
            return found, how, ""
        return [], "", (f"the timm model {type(model).__name__} has no classifier with parameters (built with "
                        "num_classes=0?).")
    named = {"transformers": (HF_HEADS, "Hugging Face head"),
             "torchvision": (TORCHVISION_HEADS, "torchvision classifier")}
    if kind in named:
        for attr in named[kind][0]:
            if attr in modules and _has_params(attr, params):
                return [_last_layer(attr, modules, params)], f"{named[kind][1]} {attr}", ""
    return _last_parameterised_layer(model, modules, params)


def _last_parameterised_layer(model: Any, modules: dict[str, Any], params: Sequence[str]) -> tuple[list[str], str, str]:
    owned = {n.rpartition(".")[0] for n in params}
    leaves = [n for n, m in modules.items() if n and not any(True for _ in m.children()) and n in owned]
    if not leaves:
        return [], "", f"{type(model).__name__} has no layer with parameters below its top level."
    last = leaves[-1]
    if not _is_layer(modules[last]):
        return [], "", (f"the last layer with parameters of {type(model).__name__} is {last} "
                        f"({type(modules[last]).__name__}), not a Linear or Conv that could be its classifier.")
    return [last], "its last layer with parameters", ""


def _find_stages(model: Any, modules: dict[str, Any], params: Sequence[str], head: list[str]) -> tuple[list[str], str]:
    """Stage module names in forward order (those with parameters), and how they were found; [] if none."""
    def keep(names: list[str]) -> list[str]:
        return [n for n in names if n in modules and _has_params(n, params)
                and not any(n == h or n.startswith(h + ".") or h.startswith(n + ".") for h in head)]

    info = getattr(model, "feature_info", None)
    if hasattr(model, "pretrained_cfg") and isinstance(info, (list, tuple)) and info:
        found = keep([f.get("module", "") for f in info if isinstance(f, dict)])
        if len(found) >= 2:
            return found, "timm feature_info"
    layers = keep([f"layer{i}" for i in range(1, 5)])
    if len(layers) == 4:
        return layers, "ResNet layer1..layer4"
    if type(model).__module__.startswith("torchvision.") and "features" in modules:  # mobilenet, efficientnet,
        found = keep([join_name("features", c) for c, _ in modules["features"].named_children()])  # convnext, vgg
        if len(found) >= 2:
            return found, "torchvision features.N"
    repeated = _repeated_layers(modules, params, head)
    if repeated is not None:
        name, why = repeated
        return keep([join_name(name, c) for c, _ in modules[name].named_children()]), f"the {why} in {name}"
    if hasattr(model, "pretrained_cfg"):  # timm without feature_info
        for attr in ("stages", "blocks", "layers"):
            found = keep([join_name(attr, c) for c, _ in modules[attr].named_children()]) if attr in modules else []
            if len(found) >= 2:
                return found, f"timm {attr}"
    return [], ""


def _repeated_layers(modules: dict[str, Any], params: Sequence[str], head: list[str]) -> tuple[str, str] | None:
    """The ModuleList/Sequential of the most parameters whose >= 2 children are all of one class and
    hold attention (or whose name says it holds layers), outside the head."""
    from torch import nn

    best, best_size = None, -1
    for name, m in modules.items():
        if not name or not isinstance(m, (nn.ModuleList, nn.Sequential)) \
                or any(name == h or name.startswith(h + ".") for h in head):
            continue
        kids = list(m.children())
        if len(kids) < 2 or len({type(k) for k in kids}) != 1:
            continue
        attention = any(isinstance(x, nn.MultiheadAttention) or "attention" in type(x).__name__.lower()
                        for x in kids[0].modules())
        if not attention and name.rpartition(".")[2] not in REPEATED_NAMES:
            continue
        size = sum(1 for p in params if p.startswith(name + "."))
        if size > best_size:
            best, best_size = (name, "repeated attention layers" if attention else "repeated layers"), size
    return best


def _cover(model: Any, params: Sequence[str], claimed: set[str]) -> list[str]:
    """The fewest names (modules, or parameters of modules above a claimed one) holding every parameter
    outside `claimed`, in parameter order."""
    out: list[str] = []

    def visit(prefix: str, module: Any) -> None:
        for p, _ in module.named_parameters(recurse=False):
            out.append(join_name(prefix, p))
        for c, child in module.named_children():
            name = join_name(prefix, c)
            if name in claimed:
                continue
            if any(x.startswith(name + ".") for x in claimed):
                visit(name, child)
            elif _has_params(name, params):
                out.append(name)

    visit("", model)
    order = {n: i for i, n in enumerate(params)}
    first = {n: next((order[p] for p in params if p == n or p.startswith(n + ".")), len(params)) for n in out}
    return sorted((n for n in out if first[n] < len(params)), key=first.__getitem__)


def _first_index(name: str, params: Sequence[str]) -> int:
    return next(i for i, p in enumerate(params) if p == name or p.startswith(name + "."))


def _stage_blocks(model: Any, params: Sequence[str], stages: list[str], head: list[str]) -> list[list[str]]:
    rest = _cover(model, params, set(stages) | set(head))
    starts = [_first_index(s, params) for s in stages]
    stem = [n for n in rest if _first_index(n, params) < starts[0]]
    blocks = [[] for _ in stages]
    for n in rest:
        at = _first_index(n, params)
        if at < starts[0]:
            continue
        later = [k for k, s in enumerate(starts) if s > at]
        blocks[later[0] if later else len(stages) - 1].append(n)  # between two stages: the next; after all: the last
    for k, s in enumerate(stages):
        blocks[k].append(s)
        blocks[k].sort(key=lambda n: _first_index(n, params))
    return ([stem] if stem else []) + blocks


def _top_level_blocks(model: Any, params: Sequence[str], head: list[str]) -> list[list[str]]:
    """Top-level modules minus the head, in module order; top-level parameters join the first block."""
    rest = _cover(model, params, set(head))
    root = [n for n in rest if "." not in n and n in params]
    groups = list(group_by_component([n for n in rest if n not in root]).values())
    if root:
        if groups:
            groups[0] = sorted(root + groups[0], key=lambda n: _first_index(n, params))
        else:
            groups = [root]
    return groups


# --- expanding the config -------------------------------------------------------------------------------

def uses_parts(*nodes: Any) -> bool:
    """Whether any `@...` selector is in these config nodes (cheap: the API resolves parts only then)."""
    def walk(x: Any) -> bool:
        if isinstance(x, str):
            return is_part(x)
        if isinstance(x, (list, tuple)):
            return any(walk(v) for v in x)
        if hasattr(x, "__dataclass_fields__"):
            return any(walk(getattr(x, f)) for f in x.__dataclass_fields__)
        return False

    return any(walk(n) for n in nodes)


def expand_mapping(mapping: MappingConfig, parts: ModelParts) -> MappingConfig:
    """`mapping.exclude` and `mapping.expect.missing`: target names (plan.py matches both against the target)."""
    expect = replace(mapping.expect, missing=parts.names(mapping.expect.missing, "mapping.expect.missing"))
    return replace(mapping, exclude=parts.names(mapping.exclude, "mapping.exclude"), expect=expect)


def expand_freeze(freeze: FreezeConfig, parts: ModelParts) -> FreezeConfig:
    """Every selector of `freeze`, and `freeze.blocks` defaulted to the recognised blocks (+ the head)."""
    until = freeze.until
    if until is not None and is_part(until):
        until = parts.names([until], "freeze.until")[-1]  # the last name: its last parameter is the part's last
    schedule = [replace(ev, unfreeze=parts.names(ev.unfreeze, f"freeze.schedule[{i}].unfreeze"),
                        freeze=parts.names(ev.freeze, f"freeze.schedule[{i}].freeze"))
                for i, ev in enumerate(freeze.schedule)]
    overrides = [replace(o, params=[_one_selector(parts.names([s], f"freeze.bn_overrides[{i}].params[{j}]"))
                                    if is_part(s) else s for j, s in enumerate(o.params)])
                 for i, o in enumerate(freeze.bn_overrides)]
    blocks = _expand_blocks(freeze.blocks, parts) if freeze.blocks is not None else parts.default_blocks()
    return replace(freeze, trainable=parts.names(freeze.trainable, "freeze.trainable"),
                   frozen=parts.names(freeze.frozen, "freeze.frozen"), until=until, schedule=schedule,
                   bn_overrides=overrides, blocks=blocks)


def expand_optim(optim: OptimConfig, parts: ModelParts) -> OptimConfig:
    """`optim.groups[*].params` and `optim.no_decay`; a group named by default after an `@...` keeps that name."""
    groups = []
    for i, g in enumerate(optim.groups):
        names = parts.names(g.params, f"optim.groups[{i}].params")
        name = g.name
        if name is None and g.params and is_part(g.params[0]):
            first = parts.names(g.params[:1], f"optim.groups[{i}].params")
            name = first[0] if len(first) == 1 else g.params[0]
        groups.append(replace(g, params=names, name=name))
    return replace(optim, groups=groups, no_decay=parts.names(optim.no_decay, "optim.no_decay"))


def _expand_blocks(blocks: list[Any], parts: ModelParts) -> list[Any]:
    """`freeze.blocks`: `@blocks` gives one entry per block; `@blocks.N` / `@head` one entry; in a list, names."""
    out: list[Any] = []
    for i, entry in enumerate(blocks):
        where = f"freeze.blocks[{i}]"
        if isinstance(entry, str) and is_part(entry):
            out += parts.expand(entry, where)
        elif isinstance(entry, (list, tuple)) and any(is_part(s) for s in entry):
            out.append(parts.names(list(entry), where))
        else:
            out.append(entry)
    return out


def _one_selector(names: list[str]) -> str:
    """Names as one selector (a BN override counts a selector that reaches no BN layer as an error)."""
    if len(names) == 1:
        return names[0]
    return "re:(?:" + "|".join(re.escape(n) for n in names) + r")(?:\..+)?"

