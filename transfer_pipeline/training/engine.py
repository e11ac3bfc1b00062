"""How a step runs on the hardware: precision, memory format, torch.compile, DDP, gradient accumulation.

The loop (loop.py) decides what happens when (events, LRs, metrics, checkpoints); the engine
runs the forward and the backward the way `trainer.*` asks. The model itself is never replaced:
DistributedDataParallel and torch.compile wrap it for the forward only, so state dicts, names,
freezing and BatchNorm policies keep seeing the plain module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..model_io import call, pick_output, split_batch, to_device

PRECISIONS = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}
_NO_AUTOCAST = contextlib.nullcontext()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name!r}: choose auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device={name}: CUDA is not available here (torch {torch.__version__}, "
                            f"built for CUDA {torch.version.cuda or 'none'}). Use device=cpu or device=auto.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device={name}: only {torch.cuda.device_count()} CUDA device(s) here.")
    elif device.type != "cpu":
        raise UserError(f"device={name!r}: choose auto, cpu, cuda or cuda:N.")
    return device


def autocast_context(precision: str, device: torch.device) -> Callable[[], Any]:
    dtype = PRECISIONS[precision]  # the schema checked the choice
    if dtype is None:
        return lambda: _NO_AUTOCAST  # one reusable context: nothing is made per step
    if dtype == torch.float16 and device.type != "cuda":
        raise UserError("trainer.precision=16 needs CUDA; on CPU use trainer.precision=bf16 or 32.")
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def _compile_failure(e: BaseException) -> bool:
    """An error raised by torch.compile's machinery (dynamo, inductor), not by the model's own code."""
    return any(type(c).__module__.startswith(("torch._dynamo", "torch._inductor"))
               for c in (e, e.__cause__, e.__context__) if c is not None)


def compile_error(e: BaseException) -> UserError:
    first = next((line for line in str(e).strip().splitlines() if line.strip()), type(e).__name__)[:300]
    return UserError(f"trainer.compile=true: torch.compile could not compile the model ({type(e).__name__}: {first}). "
                     "It needs a working C++ compiler on CPU (g++ or clang, or CXX=...) and Triton on CUDA; set "
                     "trainer.compile=false to train without it.")


def target_tensor(y: Any) -> torch.Tensor:
    if isinstance(y, torch.Tensor):
        return y
    try:
        return torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError):
        first = y[0] if isinstance(y, (list, tuple)) and y else y
        raise UserError(f"data: the targets are {type(first).__name__} values (e.g. {str(first)[:40]!r}), not numbers. "
                        "Give class indices (with the names under 'classes'), 0/1 per label, or real values.") from None


@dataclass
class Engine:
    """One process's way of running steps. `group` is its place in a torchrun job (distributed.py)."""

    device: torch.device
    precision: str = "32"
    channels_last: bool = False
    compile: bool = False
    accumulate: int = 1  # batches per optimizer step (trainer.accumulate_grad_batches)
    grad_clip: float | None = None
    group: Any = None  # distributed.Group, None in a single process
    scaler: Any = None
    output: int | str | None = None  # model.output: where the logits are in what the model returns
    target_key: str = "labels"  # data.target_key: the target in dict batches
    sharded: bool = False  # trainer.strategy=fsdp: the model is fully_shard-ed in place (sharding.py), no DDP
    regularize: Callable[[], None] | None = None  # adds a penalty's gradients before each step (optim.regularize)
    autocast: Callable[[], Any] = field(init=False)

    def __post_init__(self) -> None:
        self.autocast = autocast_context(self.precision, self.device)
        if self.scaler is None and self.precision == "16":
            self.scaler = torch.amp.GradScaler("cuda")
        self._call: Callable[..., Any] | None = None
        self._model: nn.Module | None = None  # the model the last training forward ran (its buffers are shared)
        self._wrapped_for: tuple[str, ...] | None = None

    @property
    def is_main(self) -> bool:
        """The process that writes files and logs (rank 0, or the only one)."""
        return self.group is None or self.group.rank == 0

    def prepare(self, model: nn.Module) -> nn.Module:
        """Before the optimizer is made: the device and the memory format (parameters stay the same objects)."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def inputs(self, x: Any) -> Any:
        """A batch's inputs (a tensor, or a dict of keyword arguments) on the device, in the memory format."""
        return to_device(x, self.device, self.channels_last)

    def batch(self, batch: Any) -> tuple[Any, torch.Tensor]:
        """(inputs, target) of a collated batch, on the device."""
        x, y = split_batch(batch, self.target_key)
        return self.inputs(x), target_tensor(y).to(self.device, non_blocking=True)

    def logits(self, model: nn.Module, x: Any) -> torch.Tensor:
        """The plain model's logits (evaluation, checks): no DDP or compile wrapper, under autocast."""
        with self.autocast():
            return pick_output(call(model, x), self.output)

    def wrap(self, model: nn.Module) -> None:
        """(Re)build the forward: DDP over what trains now, then torch.compile.

        DDP registers gradient hooks only for the parameters that require grad when it is built, so
        a parameter unfrozen later would train on each process alone and the copies would drift. The
        loop calls this after every schedule event; it re-wraps when the trainable set has changed.
        """
        trainable = tuple(n for n, p in model.named_parameters() if p.requires_grad)
        if self._call is not None and trainable == self._wrapped_for:
            return
        call: Any = model
        if self.group is not None and trainable and not self.sharded:  # DDP refuses a module with nothing to train
            from torch.nn.parallel import DistributedDataParallel

            call = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.compile:
            try:
                call = torch.compile(call)
            except Exception as e:  # e.g. a Python version dynamo does not support
                raise compile_error(e) from None
        self._call, self._wrapped_for = call, trainable

    def forward(self, model: nn.Module, x: Any) -> torch.Tensor:
        """The training forward (through DDP / torch.compile where on): the logits."""
        if self._call is None:
            self.wrap(model)
        with self.autocast():
            if not self.compile:
                out = pick_output(call(self._call, x), self.output)
            else:
                try:
                    out = pick_output(call(self._call, x), self.output)
                except Exception as e:
                    if _compile_failure(e):
                        raise compile_error(e) from None
                    raise
        self._model = model
        return out

    def share_buffers(self, model: nn.Module) -> None:
        """trainer.strategy=fsdp, after each training backward (the forward's autograd graph still reads the buffers):
        rank 0's buffers (the BatchNorm statistics the forward updated on each rank from its share of the batch) on
        every rank. FSDP does not sync buffers; without this the ranks would validate different models, and a
        checkpoint (one copy of each buffer) would resume another."""
        changed = [b for m in model.modules() if m.training for b in m.buffers(recurse=False) if b is not None]
        if changed:
            self.group.copy_from_rank0(changed)

    def no_sync(self) -> Any:
        """Within an accumulation window: DDP's gradients are averaged once, at the window's last batch."""
        no_sync = getattr(self._call, "no_sync", None) or getattr(getattr(self._call, "_orig_mod", None), "no_sync", None)
        return no_sync() if no_sync is not None else contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if self.sharded and self.group is not None and self._model is not None:
            self.share_buffers(self._model)

    def step(self, optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if self.regularize is not None:  # on the true gradients (unscaled), before clipping: as if in the loss
            self.regularize()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
