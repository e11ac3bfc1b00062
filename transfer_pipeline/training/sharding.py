"""`trainer.strategy=fsdp`: which modules are sharded one by one (FSDP2 `fully_shard`), and sharding them.

`plan_units` is pure (module and parameter names, the freeze plan's ever-trainable set): each unit
is a module whose own parameters (those under it that no deeper unit takes) are all trainable at
some point of the run or all never trainable, so frozen and trainable parameters never share one
flat all-gather / reduce-scatter. A chosen module (`@blocks`, or `trainer.fsdp.units`) that mixes
them is split into its children, recursively; so is the root. The run plans in `tune`
(`plan_model`: a bad selector fails before the data is read); `shard_model` applies `fully_shard`
to the units, deepest first, then to the root, after the load and the freezing and before the
optimizer is made (it must see the sharded DTensor parameters). `full_state_dict` gathers the
whole weights to rank 0 for the files (a collective: every rank calls it).

torch.distributed is imported only inside the functions that run under fsdp.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError, did_you_mean
from ..selectors import check_selector, matches

MIN_PARAMS = 1_000_000  # below this, sharding saves next to no memory and costs a collective per unit and step
KEY = "trainer.strategy=fsdp"


@dataclass(frozen=True)
class Unit:
    name: str  # module name; "" is the root
    trainable: bool  # its own parameters are trained at some point of the run
    params: int  # elements of its own parameters
    tensors: int


@dataclass
class ShardPlan:
    units: list[Unit]  # deepest first, the root last: the order fully_shard is applied in
    split: list[str] = field(default_factory=list)  # chosen modules that mixed trainable and frozen: split
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"units": [{"module": u.name or "(root)", "trainable": u.trainable, "params": u.params,
                           "tensors": u.tensors} for u in self.units], "split": self.split}

    def describe(self) -> str:
        rows = [f"  {u.name or '(root)':<40} {'trainable' if u.trainable else 'frozen' if u.tensors else '-':<9} "
                f"{u.params:>12,} params "
                f"({u.tensors} tensors)" for u in self.units]
        note = f"\n  split because they mix trainable and frozen parameters: {', '.join(self.split)}" if self.split else ""
        return f"FSDP units ({len(self.units)}, fully_shard in this order):\n" + "\n".join(rows) + note


def check_config(cfg: Any, launched: Any) -> None:
    """What trainer.strategy=fsdp needs and does not do yet: one UserError naming the key, before anything runs."""
    from ..schema import Mode

    if cfg.mode == Mode.plan:  # shows the units in one process (tune plans them); nothing is sharded
        return
    if launched is None:
        raise UserError(f"{KEY} shards the model over several processes: start it with torchrun, e.g. "
                        "torchrun --nproc_per_node=2 run.py trainer.strategy=fsdp ... (device=cpu for gloo on CPU); "
                        "in one process use trainer.strategy=auto.")
    t = cfg.trainer
    refused = [  # (set?, key, why)
        (cfg.mode != Mode.train, f"mode={cfg.mode.value}", "only mode=train shards the model (mode=plan shows "
         "the units); evaluate, predict and export in one process (python run.py mode=...)"),
        (t.ema.decay is not None, "trainer.ema", "the EMA copy of a sharded model is not built yet"),
        (t.cache_features, "trainer.cache_features", "the head would train alone, with nothing to shard"),
        (t.compile, "trainer.compile", "torch.compile of the sharded model is not built yet"),
        (t.precision == "16", "trainer.precision=16", "loss scaling of sharded gradients is not built yet; use "
         "trainer.precision=bf16 (bf16 parameters, fp32 reductions on CUDA)"),
        (t.sync_batchnorm, "trainer.sync_batchnorm", "SyncBatchNorm is not built for sharded models yet"),
        (t.channels_last, "trainer.channels_last", "fully_shard needs contiguous parameters, and channels_last "
         "convolution weights are not"),
        (cfg.optim.regularize is not None, "optim.regularize=l2_sp", "its anchors would have to be sharded as the "
         "parameters are, which is not built yet"),
        (cfg.adapters.method is not None and cfg.adapters.method.value == "dora", "adapters.method=dora", "peft's "
         "DoRA reads each base layer's whole weight outside that layer's forward, where FSDP holds only its shard; "
         "use adapters.method=lora (or rslora, loha, lokr)"),
    ]
    for on, key, why in refused:
        if on:
            raise UserError(f"{key} with {KEY} is not supported yet: {why}. Drop {key}, or use "
                            "trainer.strategy=ddp (or auto).")


def _under(module: str, name: str) -> bool:
    return not module or name == module or name.startswith(module + ".")


def _children(module: str, modules: Sequence[str]) -> list[str]:
    depth = module.count(".") + 1 if module else 0
    return [m for m in modules if m and _under(module, m) and m != module and m.count(".") == depth]


def choose_units(selectors: Sequence[str], modules: Sequence[str], where: str = "trainer.fsdp.units") -> list[str]:
    """The modules the selectors name (outermost only); one that names no module is an error with close names."""
    chosen: list[str] = []
    names = [m for m in modules if m]
    for i, sel in enumerate(selectors):
        check_selector(sel, f"{where}[{i}]")
        hit = [m for m in names if matches(sel, m, where)]
        if not hit:
            raise UserError(f"{where}[{i}]: selector {sel!r} matches no module of the model; units are module names "
                            f"(e.g. layer1, blocks.*), @blocks or @blocks.N.{did_you_mean(sel, names)}")
        chosen += [m for m in hit if m not in chosen]
    return [m for m in chosen if not any(o != m and _under(o, m) for o in chosen)]


def plan_units(modules: Sequence[str], params: Mapping[str, int], ever_trainable: set[str], chosen: Sequence[str],
               min_params: int = MIN_PARAMS, containers: frozenset[str] | set[str] = frozenset()) -> ShardPlan:
    """The units (deepest first, root last) from names alone.

    `modules`: every module name (named_modules order, "" the root); `params`: {parameter name: elements};
    `ever_trainable`: trainable at the start or unfrozen by an event; `chosen`: the modules asked for.
    A unit whose own parameters mix the two is split into its children (recursively); parameters a
    module holds directly stay with it, and if those mix, it is an error (a module's own tensors
    cannot be split). `containers` (ModuleDict, ModuleList, ParameterDict: no forward of their own)
    are never units: FSDP gathers a unit's parameters when its forward runs, and theirs never does.
    Their children are taken in their place, and parameters they hold directly stay with the unit
    above (peft keeps LoRA's A and B matrices in ModuleDicts, LoKr's factors in ParameterDicts).
    """
    units: list[str] = []
    split: list[str] = []

    def below(module: str) -> list[str]:  # the children that can be units: a container's children in its place
        out: list[str] = []
        for child in _children(module, modules):
            out += below(child) if child in containers else [child]
        return out

    def own(unit: str) -> list[str]:
        deeper = [u for u in units if u != unit and _under(unit, u)]
        return [p for p in params if _under(unit, p) and not any(_under(d, p) for d in deeper)]

    def mixed(names: list[str]) -> bool:
        return len({n in ever_trainable for n in names}) > 1

    def settle(unit: str) -> None:
        mine = own(unit)
        if not mixed(mine):
            return
        split.append(unit or "(root)")
        for child in below(unit):
            if any(_under(child, p) for p in mine) and child not in units:
                units.append(child)
                settle(child)
        direct = own(unit)
        if mixed(direct):
            on = [p for p in direct if p in ever_trainable]
            off = [p for p in direct if p not in ever_trainable]
            raise UserError(f"{KEY}: module {unit or '(root)'!r} holds trainable ({', '.join(on[:3])}) and frozen "
                            f"({', '.join(off[:3])}) parameters itself, and one FSDP unit cannot mix them. Freeze or "
                            "train them together (freeze.trainable / freeze.frozen).")

    for m in [c for m in chosen for c in (below(m) if m in containers else [m])]:  # e.g. encoder.layers: each layer
        if m not in units and any(_under(m, p) for p in params):
            units.append(m)
            settle(m)
    units.append("")
    settle("")
    order = sorted((u for u in units if u and own(u)), key=lambda u: -u.count(".")) + [""]
    rows = []
    for u in order:
        mine = own(u)
        rows.append(Unit(u, any(p in ever_trainable for p in mine), sum(params[p] for p in mine), len(mine)))
    plan = ShardPlan(rows, split)
    total = sum(params.values())
    if total < min_params:
        plan.warnings.append(f"{KEY}: the model has {total:,} parameters (fewer than {min_params:,}): sharding "
                             "saves little memory here and adds collectives per unit and step; "
                             "trainer.strategy=ddp is likely faster for it.")
    if len(rows) < 2:
        plan.warnings.append(f"{KEY}: one unit only (the root): every parameter is gathered at once, so peak "
                             "memory is that of the whole model; name smaller units in trainer.fsdp.units.")
    return plan


def plan_model(model: Any, units: Sequence[str] | None, parts: Any, ever_trainable: set[str]) -> ShardPlan:
    """The units of the built `model` (names only): `units` are trainer.fsdp.units (None: @blocks)."""
    modules = [n for n, _ in model.named_modules()]
    where = "trainer.fsdp.units"
    if units is None:
        chosen = [m for block in parts.blocks for m in block if m in set(modules)]  # a block may name a parameter
    else:
        chosen = choose_units(parts.names(list(units), where), modules, where)
    return plan_units(modules, {n: p.numel() for n, p in model.named_parameters()}, ever_trainable, chosen,
                      containers=containers(model))


def containers(model: Any) -> set[str]:
    """The modules with no forward of their own (ModuleDict, ModuleList, ParameterDict, ...): never FSDP units."""
    import torch.nn as nn

    return {n for n, m in model.named_modules() if type(m).forward is nn.Module.forward}


def shard_model(model: Any, plan: ShardPlan, precision: str, device: Any) -> None:
    """fully_shard the plan's units, deepest first, then the root (after the load and the freezing, before the
    optimizer). trainer.precision=bf16 on CUDA: bf16 all-gathers and compute, fp32 gradient reductions."""
    import torch
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    if isinstance(model, FSDPModule):  # sharded already (run/sharded_load.py: before the broadcast of rank 0's load)
        return
    mp = MixedPrecisionPolicy()
    if precision == "bf16" and device.type == "cuda":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for u in plan.units:
        fully_shard(model.get_submodule(u.name) if u.name else model, mp_policy=mp)


def full_state_dict(model: Any) -> dict[str, Any]:
    """The whole weights (target names, on the CPU) on rank 0, {} on the others. Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
