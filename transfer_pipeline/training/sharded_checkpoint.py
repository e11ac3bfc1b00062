"""Full-state checkpoints of a sharded run (`trainer.strategy=fsdp`): the folder `checkpoints/last.dcp/`.

Written by every rank at once with torch.distributed.checkpoint (DCP): each rank writes its shards of
the model and of the optimizer state (`__*_*.distcp` files and DCP's `.metadata`), plus `rank{R}.pt`,
its part of what checkpoints/last.pt holds in a one-process run (position, its own RNG states, the
metrics, best, early stopping, events fired, the config fingerprint, the optimizer's parameter groups),
and rank 0 writes `meta.json` (format and the number of processes that wrote it).

Atomic: the ranks write into `last.dcp.partial/` beside it; after a barrier rank 0 moves the previous
`last.dcp` to `last.dcp.old`, renames the new one into place and removes the old one. A save killed
half-way leaves only `last.dcp.partial/` (removed by the next save), never a half `last.dcp`.

Loading: every rank reads its shards; DCP reshards when the number of processes differs from the one
it was written with (rank R then continues from rank 0's position and RNG, noted in the log).

torch.distributed is imported only inside the functions.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError

log = logging.getLogger(__name__)

FORMAT = 1
DIR = "last.dcp"
PARTIAL = "last.dcp.partial"
OLD = "last.dcp.old"
META = "meta.json"
OPT_PREFIX = "optimizer.state."


def rank_file(rank: int) -> str:
    return f"rank{rank}.pt"


def _names(model: Any, optimizer: Any) -> list[str]:
    """The parameter names in the optimizer's index order (what its state_dict numbers them by)."""
    by_id = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    try:
        return [by_id[id(p)] for g in optimizer.param_groups for p in g["params"]]
    except KeyError:
        raise UserError("trainer.resume: the optimizer holds a tensor that is not a parameter of the model; a sharded "
                        "checkpoint names optimizer state by parameter name.") from None


def optimizer_by_name(model: Any, optimizer: Any) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """(state keyed by parameter name, param_groups with parameter names), without the zero-step that
    torch's get_optimizer_state_dict takes on an optimizer without state (it would change the run)."""
    names = _names(model, optimizer)
    sd = optimizer.state_dict()
    state = {names[i]: dict(s) for i, s in sd["state"].items()}
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]]
    return state, groups


def save(ckpt_dir: Path, model: Any, optimizer: Any, extra: dict[str, Any], rank: int, world: int) -> None:
    """checkpoints/last.dcp, written by every rank (a collective: every rank must call it)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    final, partial, old = ckpt_dir / DIR, ckpt_dir / PARTIAL, ckpt_dir / OLD
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if not final.exists() and complete(old):  # killed between the two renames: the old one is the last good one
            old.rename(final)
        shutil.rmtree(partial, ignore_errors=True)  # a save that never finished
        shutil.rmtree(old, ignore_errors=True)
        partial.mkdir()
    dist.barrier()
    state, groups = optimizer_by_name(model, optimizer)
    tensors = {"model": get_model_state_dict(model), "optimizer": {"state": state}}
    dcp.save(tensors, checkpoint_id=str(partial))
    torch.save({"format": FORMAT, **extra, "param_groups": groups, "world": world, "rank": rank},
               partial / rank_file(rank))
    dist.barrier()
    if rank == 0:
        (partial / META).write_text(json.dumps({"format": FORMAT, "world": world}))
        if final.exists():
            final.rename(old)
        partial.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()  # nobody starts the next save before this one is in place


def complete(path: Path) -> bool:
    return (path / META).is_file() and (path / ".metadata").is_file() and (path / rank_file(0)).is_file()


def read(path: Path, rank: int, world: int) -> dict[str, Any]:
    """This rank's part of the checkpoint folder `path` (position, RNG, metrics, config ...) with "dcp" (the
    folder, for `load_states`) and "world" (the processes that wrote it); a UserError naming what is wrong."""
    from .checkpoint import read_state, structure_problem

    if not path.is_dir():
        raise UserError(f"trainer.resume: no sharded checkpoint at {path}; a trainer.strategy=fsdp run writes "
                        f"checkpoints/{DIR}/ after its first epoch (or every trainer.checkpoint_every_steps steps).")
    missing = [n for n in (META, ".metadata", rank_file(0)) if not (path / n).is_file()]
    if missing:
        raise UserError(f"trainer.resume: {path} is not a complete sharded checkpoint (no {', '.join(missing)}); it "
                        "was damaged or not written by this pipeline. Resume from another checkpoint, or start a fresh run.")
    try:
        meta = json.loads((path / META).read_text())
        saved_world = int(meta["world"])
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"trainer.resume: cannot read {path / META} ({e}); the sharded checkpoint is damaged.") from None
    own = path / rank_file(rank if rank < saved_world else 0)  # a process more than wrote it: rank 0's part
    if not own.is_file():
        raise UserError(f"trainer.resume: {path} is not a complete sharded checkpoint (no {own.name}); it was "
                        "damaged. Resume from another checkpoint, or start a fresh run.")
    state = read_state(own, "the sharded checkpoint is damaged or not one this pipeline wrote.")
    problem = structure_problem({**state, "model": {}, "optimizer": {}}) if isinstance(state, dict) else "not a dict"
    if problem is None and not isinstance(state.get("param_groups"), list):
        problem = "it has no 'param_groups'"
    if problem is not None:
        raise UserError(f"trainer.resume: {own} is not part of a checkpoint of this pipeline, or it was changed "
                        f"after it was written: {problem}. Resume from another checkpoint, or start a fresh run.")
    if saved_world != world and rank == 0:
        log.warning("trainer.resume: %s was written by %d process(es) and this run has %d: the model and optimizer "
                    "are resharded, and every process continues from rank 0's position and random state, so the "
                    "run goes on close to, not bit for bit as, an uninterrupted one.", path, saved_world, world)
    return {**state, "dcp": str(path), "world": saved_world}


def load_states(path: str | Path, model: Any, optimizer: Any, groups: list[dict[str, Any]]) -> None:
    """The checkpoint's model and optimizer shards into this (sharded) run's, resharded where the number of
    processes differs; a UserError when they do not fit."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         set_model_state_dict)

    path = Path(path)
    try:
        meta = dcp.FileSystemReader(str(path)).read_metadata()
    except Exception as e:  # noqa: BLE001
        raise UserError(f"trainer.resume: cannot read {path / '.metadata'} ({type(e).__name__}); the sharded "
                        "checkpoint is damaged.") from None
    params = dict(model.named_parameters(remove_duplicate=False))
    state: dict[str, dict[str, Any]] = {}
    for key, md in meta.state_dict_metadata.items():
        if not key.startswith(OPT_PREFIX):
            continue
        name, what = key[len(OPT_PREFIX):].rsplit(".", 1)
        p = params.get(name)
        size = getattr(md, "size", None)
        if p is None or size is None:
            raise UserError(f"trainer.resume: {path} holds optimizer state {key!r} for no parameter of this model; "
                            "it is not a checkpoint of this run.")
        dtype = md.properties.dtype
        state.setdefault(name, {})[what] = (torch.zeros_like(p, dtype=dtype) if tuple(size) == tuple(p.shape)
                                            and len(size) else torch.zeros(tuple(size), dtype=dtype))
    model_sd = get_model_state_dict(model)
    try:
        dcp.load({"model": model_sd, "optimizer": {"state": state}}, checkpoint_id=str(path))
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - another model, or damaged shard files
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        first = (lines[-1] if isinstance(e, CheckpointException) and lines else lines[0] if lines else
                 type(e).__name__)[:300]
        raise UserError(f"trainer.resume: the sharded checkpoint {path} does not fit this model or is damaged "
                        f"({first}). Resume with the model it was written with, or start a fresh run.") from None
    set_model_state_dict(model, model_sd, options=StateDictOptions(strict=True))
    names = _names(model, optimizer)
    index = {n: i for i, n in enumerate(names)}
    try:
        optimizer.load_state_dict({"state": {index[n]: s for n, s in state.items()},
                                   "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in groups]})
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
        raise UserError(f"trainer.resume: the optimizer state in {path} does not fit this run's parameter groups "
                        f"({str(e)[:300]}); it is not a checkpoint of this run (optim.groups, freeze or the optimizer "
                        "differ).") from None
