"""`trainer.strategy=fsdp` in a run: the units planned (`plan_shards`, from tune), and the planned load read
once, on rank 0, and broadcast into the sharded model.

Every rank builds the target on the meta device (plan) and plans the load from names and shapes.
Then (`load_on_rank0`, the `load` step) only rank 0 applies the plan, on the CPU, from the source's
memory map (mapping/apply.py's `load_model`: loaded tensors assigned, fresh ones initialised by
their modules' resets with the seeded generator, exactly as one process does); the other ranks keep
the meta model, read no tensor of the source, and take rank 0's random-generator states, so every
rank goes on as one process would. After the freezing and the FSDP plan (`shard_and_broadcast`,
from tune: before the data step's check forward, which then runs sharded; train's `shard_model` finds
the model sharded) every rank `fully_shard`s its model, the meta ones are made real (`to_empty`; the buffers
the constructor made keep their values), and `set_model_state_dict(broadcast_from_rank0=True)`
sends rank 0's tensors one at a time, each rank keeping its shard: parameters and buffers
(BatchNorm statistics) alike. So a machine holds one copy of the weights (rank 0's, memory-mapped)
and each process its shards.

Where this cannot be done, every rank loads the whole model as before (and the log says why):
no source, a target built normally (`source.meta_init=false`, or a constructor that cannot run on
meta), a buffer computed from parameters in the constructor, and `mapping.verify` (it checks the
whole loaded model on each rank, before sharding).

`watch_memory` logs, after the first optimizer step, the bytes each rank holds in parameters,
gradients and optimizer state, and its peak memory (summary.json: fsdp.local_bytes, one row per rank).

torch.distributed is imported only inside the functions.
"""

from __future__ import annotations

import logging
import random
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError

log = logging.getLogger(__name__)


@dataclass
class SourceReads:
    """The source tensors this process read (counted at `SourceWeights.get`; a tensor read twice, by the value
    check and by the load, counts once) and their bytes."""

    names: set[str] = field(default_factory=set)
    bytes: int = 0

    @property
    def tensors(self) -> int:
        return len(self.names)


@dataclass
class ShardedLoad:
    reads: SourceReads
    rank: int


def count_reads(weights: Any) -> SourceReads:
    """Wrap `weights.get` so that every tensor read from the source is counted (tensors, bytes)."""
    reads = SourceReads()
    get = weights.get

    def counted(name: str) -> Any:
        t = get(name)
        if name not in reads.names:
            reads.names.add(name)
            reads.bytes += t.numel() * t.element_size()
        return t

    weights.get = counted
    return reads


def why_not(r: Any) -> str | None:
    """Why the rank-0 load cannot be used for this run (every rank then loads the whole model), or None."""
    from ..mapping.apply import is_on_meta

    if r.group is None:
        return "one process"
    if r.weights is None:
        return "no source: every rank builds the model normally (same seed)"
    if r.cfg.mapping.verify.enabled:
        return "mapping.verify checks the whole loaded model on every rank before it is sharded"
    if not is_on_meta(r.model):
        return "the target was built normally, not on the meta device (source.meta_init=false, or its constructor " \
               "cannot run on meta)"
    if any(b.is_meta for b in r.model.buffers()):
        return "a buffer of the target is computed from its parameters in the constructor"
    return None


def _rng_states() -> tuple[Any, Any, Any]:
    import numpy as np
    import torch

    return torch.get_rng_state(), random.getstate(), np.random.get_state()


def _set_rng_states(states: tuple[Any, Any, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(states[0])
    random.setstate(states[1])
    np.random.set_state(states[2])


def load_on_rank0(r: Any, rebuild: Callable[[], Any]) -> bool:
    """The `load` step under fsdp: rank 0 applies the plan (on the CPU, from the memory map); the other ranks keep
    the meta model. Returns False (nothing done) where the rank-0 load does not apply (`why_not`)."""
    import torch

    from ..mapping.apply import load_model

    reason = why_not(r)
    if reason is not None:
        log.info("trainer.strategy=fsdp: every rank loads the whole model before sharding (%s)", reason)
        return False
    reads = count_reads(r.weights)
    rank, error = r.group.rank, None
    if rank == 0:
        try:
            r.model = load_model(r.model, r.report.plan, r.weights, torch.device("cpu"), rebuild,
                                 r.cfg.source.allow_nonfinite, r.cfg.source.allow_lossy_cast)
        except UserError as e:  # the other ranks wait at the broadcast below: they fail with the same message
            error = e
    shared = r.group.broadcast((str(error) if error is not None else None, _rng_states()))
    if error is not None:
        raise error
    if shared[0] is not None:
        raise UserError(shared[0])
    if rank != 0:
        _set_rng_states(shared[1])  # rank 0's init of the fresh tensors (or its fallback build) drew from them
    r.sharded_load = ShardedLoad(reads, rank)
    return True


def shard_and_broadcast(r: Any) -> None:
    """fully_shard the model (the plan's units), make the meta ranks' shards real and fill every rank's shards
    (and buffers) from rank 0's loaded tensors. Every rank calls it (collectives)."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from ..mapping.apply import is_on_meta
    from ..training.sharding import shard_model

    model, rank = r.model, r.sharded_load.rank
    full = model.state_dict() if rank == 0 else {}  # before sharding: the loaded (memory-mapped) tensors
    buffers = {name: (module, leaf, b) for name, module in model.named_modules()
               for leaf, b in module._buffers.items() if b is not None and not b.is_meta}
    shard_model(model, r.shard_plan, r.cfg.trainer.precision, r.device)
    if is_on_meta(model):
        model.to_empty(device=r.device)
        for module, leaf, b in buffers.values():  # the constructor's values (non-persistent ones are not sent)
            module._buffers[leaf] = b.to(r.device)
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del full
    if rank == 0:
        release(r.weights)
    reads = every_rank((r.sharded_load.reads.tensors, r.sharded_load.reads.bytes))
    log.info("trainer.strategy=fsdp: the load was applied on rank 0 and broadcast into the shards; source tensors "
             "(bytes) read per rank: %s", ", ".join(f"rank {i}: {n} ({b:,})" for i, (n, b) in enumerate(reads)))
    fsdp = r.summary.setdefault("fsdp", {})
    fsdp["load"] = "rank 0, broadcast"
    fsdp["source_bytes_read"] = [b for _, b in reads]  # per rank: what each took from the source
    if torch.cuda.is_available() and r.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(r.device)


def release(weights: Any) -> None:
    """Rank 0, after the broadcast: the shards hold copies, so the source's memory map (its file pages, counted in
    this process's memory) is let go; nothing reads the source after the load in a sharded run."""
    def released(name: str) -> Any:
        raise RuntimeError(f"bug: source tensor {name} read after the sharded load released the source")

    weights.get, weights.candidates, weights.module = released, {}, None


def every_rank(value: Any) -> list[Any]:
    """`value` of every rank, in rank order (a collective)."""
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def tensor_bytes(t: Any) -> int:
    """Bytes this process holds for `t` (its local shard for a DTensor)."""
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.numel() * local.element_size()


def local_bytes(model: Any, optimizer: Any) -> dict[str, int]:
    """Bytes of this process's parameters, gradients and optimizer state (local shards under FSDP)."""
    params = list(model.parameters())
    state = [v for s in optimizer.state.values() for v in s.values() if hasattr(v, "numel") and v.dim() > 0]
    out = {"parameters": sum(tensor_bytes(p) for p in params),
           "gradients": sum(tensor_bytes(p.grad) for p in params if p.grad is not None),
           "optimizer": sum(tensor_bytes(v) for v in state)}
    out["total"] = sum(out.values())
    return out


def peak_memory(device: Any) -> tuple[str, int]:
    """('rss', peak resident bytes of this process) on the CPU, ('cuda_allocated', peak bytes) on CUDA."""
    import torch

    if device.type == "cuda":
        return "cuda_allocated", int(torch.cuda.max_memory_allocated(device))
    try:  # VmHWM: this process's own high-water mark (ru_maxrss may carry the parent's over exec)
        with open("/proc/self/status") as f:
            return "rss", next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return "rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def resident_now() -> int | None:
    """This process's resident bytes now (VmRSS; memory-mapped file pages it touched included), None off Linux."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return None


def watch_memory(r: Any, optimizer: Any) -> None:
    """After the first optimizer step: this rank's parameter, gradient and optimizer-state bytes and its peak memory,
    in the log (every rank) and in summary.json's fsdp.local_bytes (rank 0's)."""
    handle = None

    def after_step(opt: Any, args: Any, kwargs: Any) -> None:  # every rank steps together: the gather is safe
        kind, peak = peak_memory(r.device)
        now = {"rss": resident_now()} if kind == "rss" else {}
        rows = every_rank({**local_bytes(r.model, opt), f"peak_{kind}": peak, **now})
        for rank, row in enumerate(rows):
            log.info("trainer.strategy=fsdp: rank %d holds parameters %s, gradients %s, optimizer state %s bytes "
                     "(total %s) after the first step; peak %s so far %s bytes%s", rank, f"{row['parameters']:,}",
                     f"{row['gradients']:,}", f"{row['optimizer']:,}", f"{row['total']:,}", kind,
                     f"{row[f'peak_{kind}']:,}", f", resident now {row['rss']:,}" if row.get("rss") else "")
        r.summary.setdefault("fsdp", {})["local_bytes"] = rows  # per rank
        handle.remove()

    handle = optimizer.register_step_post_hook(after_step)


def plan_shards(r: Any) -> None:
    """`trainer.strategy=fsdp`: the FSDP units from names (training/sharding.py), in the log and the summary."""
    from ..training.sharding import plan_model

    ever = set(r.freeze.trainable).union(*(ev.names for ev in r.freeze.events))  # trainable at some point
    r.shard_plan = plan_model(r.model, r.cfg.trainer.fsdp.units, r.parts, ever)
    if r.engine.is_main:  # rank 0 warns, as for everything else
        for w in r.shard_plan.warnings:
            log.warning(w)
    log.info(r.shard_plan.describe())
    r.summary["fsdp"] = r.shard_plan.to_dict()
    if r.sharded_load is not None:  # sharded now (before the data's check forward): rank 0's load broadcast
        shard_and_broadcast(r)
