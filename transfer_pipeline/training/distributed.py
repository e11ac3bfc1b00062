"""`torchrun --nproc_per_node=N run.py ...`: one process per device, PyTorch's own process group.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address in each process's
environment; `join` turns them into a process group (nccl on GPUs, gloo on CPU). Rank 0 alone
writes the run folder; the other ranks run in a folder of their own that run.py gives them (and
removes) and read what they need (a checkpoint to resume) from rank 0's folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ..errors import UserError


def _slurm_step() -> bool:
    """A SLURM job step of several tasks that torchrun did not start (torchrun's workers have its run id)."""
    env = os.environ
    return ("TORCHELASTIC_RUN_ID" not in env and "SLURM_PROCID" in env
            and env.get("SLURM_STEP_NUM_TASKS", "1").strip() not in ("", "1"))


def launched() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when this process is one of several, else None.

    torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; a SLURM job step (`srun`, or Hydra's submitit
    launcher with tasks_per_node > 1) sets SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID
    (`join` exports them under torchrun's names). A batch script or an salloc shell is no job step
    (no SLURM_STEP_NUM_TASKS): there `python run.py` is one process.
    """
    env = os.environ
    try:
        if env.get("WORLD_SIZE", "1") not in ("", "1"):
            return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"]))
        if _slurm_step():
            return int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]), int(env.get("SLURM_LOCALID", "0"))
    except (KeyError, ValueError):
        raise UserError("WORLD_SIZE (or SLURM_STEP_NUM_TASKS) says this is one of several processes, but RANK / "
                        "LOCAL_RANK (SLURM_PROCID / SLURM_LOCALID) are not whole numbers: start distributed runs "
                        "with torchrun (torchrun --nproc_per_node=N run.py ...) or srun.") from None
    return None


def export_slurm_env(rank: int, world: int, local: int) -> None:
    """torchrun's variables from a SLURM step's, so that the process group starts the same way: MASTER_ADDR
    is the step's first node, MASTER_PORT comes from the job id (both kept where already set)."""
    env = os.environ
    env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local),
               LOCAL_WORLD_SIZE=env.get("SLURM_STEP_TASKS_PER_NODE", "1").split("(")[0].split(",")[0])
    env.setdefault("MASTER_ADDR", first_host(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "")))
    env.setdefault("MASTER_PORT", str(29500 + int(env.get("SLURM_JOB_ID", "0") or 0) % 10000))


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[07-09,12],cpu1' -> 'gpu07'; '' -> 'localhost'."""
    entry, depth = nodelist.strip(), 0
    for i, ch in enumerate(entry):  # the first entry ends at the first comma outside brackets
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            entry = entry[:i]
            break
    if "[" not in entry:
        return entry or "localhost"
    prefix, rest = entry.split("[", 1)
    inside, _, suffix = rest.partition("]")
    return prefix + inside.split(",")[0].split("-")[0] + suffix


def launcher_command(world: int) -> str:
    """How to start this run's processes again (for the resume command)."""
    if _slurm_step():
        return f"srun --ntasks={world} python run.py"
    return f"torchrun --nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', world)} run.py"


@dataclass
class Group:
    rank: int
    world: int
    local_rank: int
    backend: str

    def sum(self, values: list[float], device: Any) -> list[float]:
        """Each value summed over the processes (one collective for the whole list)."""
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


    def copy_from_rank0(self, tensors: list[Any]) -> None:
        """Rank 0's values into `tensors` on every rank, in place (one collective per dtype)."""
        import torch
        import torch.distributed as dist

        by_dtype: dict[Any, list[Any]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for same in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in same])
            dist.broadcast(flat, src=0)
            for t, part in zip(same, flat.split([t.numel() for t in same])):
                t.copy_(part.view_as(t))


def join(device_name: str) -> tuple[Group, Any] | None:
    """Join the torchrun job, if this is one: the process group and this process's device."""
    where = launched()
    if where is None:
        return None
    import torch
    import torch.distributed as dist

    rank, world, local = where
    if _slurm_step():
        export_slurm_env(rank, world, local)
    if device_name == "cpu" or (device_name == "auto" and not torch.cuda.is_available()):
        device, backend = torch.device("cpu"), "gloo"
    else:
        if not torch.cuda.is_available():
            raise UserError(f"device={device_name}: CUDA is not available here; run the torchrun job with device=cpu "
                            "(gloo) or on a machine with GPUs.")
        if local >= torch.cuda.device_count():
            raise UserError(f"torchrun: local rank {local} but only {torch.cuda.device_count()} CUDA device(s) here; "
                            "set --nproc_per_node to at most the number of GPUs.")
        if device_name not in ("auto", "cuda"):
            raise UserError(f"device={device_name}: under torchrun each process takes the GPU of its local rank; use "
                            "device=auto or device=cuda.")
        device, backend = torch.device("cuda", local), "nccl"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    return Group(rank, world, local, backend), device


def leave() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
