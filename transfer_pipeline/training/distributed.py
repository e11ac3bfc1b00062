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


def launched() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when torchrun started this process with more than one, else None."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    except (KeyError, ValueError):
        raise UserError("WORLD_SIZE is set but RANK / LOCAL_RANK are not whole numbers: start distributed runs with "
                        "torchrun (torchrun --nproc_per_node=N run.py ...).") from None


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


def join(device_name: str) -> tuple[Group, Any] | None:
    """Join the torchrun job, if this is one: the process group and this process's device."""
    where = launched()
    if where is None:
        return None
    import torch
    import torch.distributed as dist

    rank, world, local = where
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
