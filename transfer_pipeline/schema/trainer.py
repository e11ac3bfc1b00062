"""`trainer`: the loop's settings, checkpoints, the monitored metric, EMA, early stopping."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from .checks import check_count, check_number
from ..errors import UserError

PRECISIONS = ("32", "bf16", "16")


class FinalWeights(Enum):  # what model.safetensors holds at the end of a run
    last = "last"  # the weights after the last epoch
    best = "best"  # the weights of the epoch where trainer.monitor was best (checkpoints/best.safetensors)


LOGGERS = ("csv", "tensorboard")


class Strategy(Enum):  # how torchrun's processes share the work (docs/speed.md)
    auto = "auto"  # ddp under torchrun, one process otherwise
    ddp = "ddp"  # every process holds the whole model; gradients averaged (DistributedDataParallel)
    fsdp = "fsdp"  # parameters, gradients and optimizer state sharded over the processes (FSDP2 fully_shard)


@dataclass
class FsdpConfig:
    units: Optional[list[str]] = None  # selectors of the modules sharded one by one (module names, @blocks, @blocks.N);
    # null = @blocks. A unit that mixes trainable and frozen parameters is split into its children

    def __post_init__(self) -> None:
        if self.units is not None and not self.units:
            raise UserError("trainer.fsdp.units=[]: give module selectors (e.g. [layer1, layer2] or ['@blocks']), "
                            "or null for @blocks.")


@dataclass
class EarlyStoppingConfig:
    patience: Optional[int] = None  # epochs without improvement of trainer.monitor before stopping; null = off
    min_delta: float = 0.0  # an improvement must exceed this

    def __post_init__(self) -> None:
        if self.patience is not None:
            check_count("trainer.early_stopping.patience", self.patience, 1,
                        want="a whole number of epochs >= 1 (null: no early stopping)")
        check_number("trainer.early_stopping.min_delta", self.min_delta, 0, want="a finite number >= 0")


@dataclass
class EMAConfig:
    decay: Optional[float] = None  # e.g. 0.999: an exponential moving average of the weights; null = off

    def __post_init__(self) -> None:
        if self.decay is not None:
            check_number("trainer.ema.decay", self.decay, 0, 1, low_open=True, high_open=True,
                         want="a number between 0 and 1 (both excluded), e.g. 0.999")


@dataclass
class TrainerConfig:
    epochs: int = 6  # epochs to train
    batch_size: int = 64  # samples per batch (the global batch: torchrun's processes share it)
    precision: str = "32"  # 32 (float32) | bf16 | 16 (autocast; 16: CUDA only, with loss scaling)
    limit_train_batches: Optional[int] = None  # cap batches per epoch (smoke tests)
    limit_val_batches: Optional[int] = None  # cap validation batches per evaluation (smoke tests)
    grad_clip: Optional[float] = None  # clip the gradient norm to this before each step; null = no clipping
    save_checkpoints: bool = True  # checkpoints/last.safetensors and the full state last.pt after every epoch
    keep_epoch_checkpoints: bool = False  # also checkpoints/epoch_<N>.safetensors for every epoch
    checkpoint_every_steps: Optional[int] = None  # also write last.pt every N optimizer steps
    resume: Optional[str] = None  # auto: continue the run in hydra.run.dir from checkpoints/last.pt; or a last.pt path
    deterministic: bool = False  # deterministic algorithms and seeded workers: same config -> same weights (CPU)
    monitor: Optional[str] = None  # the metric for best.safetensors, best_epoch, early stopping and the sweeper;
    # null = the task's: val_acc (classification), val_f1 (multilabel), val_loss (regression)
    monitor_mode: Optional[str] = None  # max | min; null = min for losses, max otherwise
    final_weights: FinalWeights = FinalWeights.last  # what model.safetensors holds: last | best
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    progress: bool = True  # a progress bar per epoch on a terminal (never in logs)
    accumulate_grad_batches: int = 1  # batches per optimizer step (the effective batch is batch_size x this)
    channels_last: bool = False  # NHWC memory format for model and images (faster convolutions on GPUs)
    compile: bool = False  # torch.compile the forward (needs a C++ compiler on CPU, Triton on CUDA)
    cudnn_benchmark: bool = True  # on CUDA, let cuDNN pick the fastest kernels (off under trainer.deterministic)
    sync_every_steps: int = 50  # read losses/accuracy from the device (and check for NaN) every N optimizer steps
    sync_batchnorm: bool = False  # under torchrun: BatchNorm statistics over the global batch (CUDA only)
    strategy: Strategy = Strategy.auto  # under torchrun: auto (= ddp) | ddp | fsdp (sharded parameters)
    fsdp: FsdpConfig = field(default_factory=FsdpConfig)  # trainer.strategy=fsdp's settings
    cache_features: bool = False  # frozen backbone: compute its outputs once, train the head on them
    max_minutes: Optional[float] = None  # wall-clock limit of the run, in minutes: then it stops as on SIGTERM
    # (the step finishes, last.pt, `interrupted`, exit 124), or is ended hard (`failed`) if still going 60 s later;
    # null = no limit

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"trainer.precision={self.precision!r}: choose one of {', '.join(PRECISIONS)}.")
        check_count("trainer.epochs", self.epochs, 0)
        check_count("trainer.batch_size", self.batch_size, 1)
        for key in ("limit_train_batches", "limit_val_batches"):
            if getattr(self, key) is not None:  # 0 would "complete" without training (or evaluating)
                check_count(f"trainer.{key}", getattr(self, key), 1,
                            want="a whole number of batches >= 1 (null: every batch)")
        if self.grad_clip is not None:  # a negative norm would turn every step into gradient ascent
            check_number("trainer.grad_clip", self.grad_clip, 0, low_open=True,
                         want="a finite max gradient norm > 0 (null: no clipping)")
        if self.checkpoint_every_steps is not None:
            check_count("trainer.checkpoint_every_steps", self.checkpoint_every_steps, 1,
                        want="a whole number of steps >= 1 (null: after every epoch only)")
        check_count("trainer.accumulate_grad_batches", self.accumulate_grad_batches, 1,
                    want="a whole number of batches per optimizer step >= 1 (1: no accumulation)")
        check_count("trainer.sync_every_steps", self.sync_every_steps, 1,
                    want="a whole number of steps >= 1 (1: read the loss every step)")
        if self.monitor_mode not in (None, "max", "min"):
            raise UserError(f"trainer.monitor_mode={self.monitor_mode!r}: choose max, min or null (by the metric).")
        if self.max_minutes is not None:
            check_number("trainer.max_minutes", self.max_minutes, 0, low_open=True,
                         want="a finite number of minutes > 0, e.g. 90 or 0.5 (null: no limit)")
        if self.fsdp.units is not None and self.strategy != Strategy.fsdp:  # it would do nothing
            raise UserError(f"trainer.fsdp.units is set but trainer.strategy={self.strategy.value}; add "
                            "trainer.strategy=fsdp (under torchrun), or drop trainer.fsdp.units.")
        if self.resume is not None and not self.resume.strip():
            raise UserError("trainer.resume: empty; give auto (the run in hydra.run.dir) or a path to a last.pt.")
