"""Structured configs: the public config interface, checked by OmegaConf before anything runs.

Every node is a dataclass registered in Hydra's ConfigStore, so `optim.lrr=0.1` or a misspelt
`mode=trian` fails at composition time with the key and the valid choices. Only `model`,
`source.model` and mapping rules are free-form (their keys are the model's own arguments).

Range and consistency checks live here too, next to the fields they check: each node's
`__post_init__` checks its own values (and its list entries, whose index it knows), and
`RunConfig.__post_init__` the checks that span nodes (an event after the last epoch). They
run when the composed config becomes dataclasses (`to_run_config`) and when the Python API
builds a node from keyword arguments, so a bad value fails before anything runs, naming the
key, the value and the valid range. What needs the model (selectors, shapes) is checked later.
This module is light on purpose: no torch import, it runs before every command.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from .checks import _is_count, check_count, check_lr_fields, check_number
from .errors import UserError, did_you_mean

PRECISIONS = ("32", "bf16", "16")
MAX_IMAGE_SIZE = 4096  # larger inputs exhaust memory long before they train
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


class Mode(Enum):
    train = "train"  # load, freeze, train, write everything
    plan = "plan"  # build the model and the load plan, write load_report.json, train nothing
    eval = "eval"  # load and evaluate on the validation split, no training
    export = "export"  # load and write model.safetensors (target names), no data, no training
    predict = "predict"  # a trained model's predictions on image files or a data split -> predictions.csv


class Task(Enum):
    classification = "classification"  # one class per sample: cross-entropy, accuracy (top-1, top-5, per class)
    multilabel = "multilabel"  # any number of labels per sample (0/1 targets): BCE with logits, F1
    regression = "regression"  # real-valued targets: MSE (or L1), MAE / RMSE


class ImagePreset(Enum):  # data.preset: how images are resized and normalised (image_folder, mode=predict on files)
    auto = "auto"  # the source weights' own transforms() when source.weights is set, else resize
    resize = "resize"  # resize + center crop to data.image_size, data.mean / data.std (ImageNet's by default)
    imagenet = "imagenet"  # resize 256, center crop 224, ImageNet mean / std (most torchvision and timm CNNs)
    inception = "inception"  # resize 342, center crop 299, mean / std 0.5 (Inception v3)
    clip = "clip"  # resize 224 bicubic, center crop 224, CLIP's mean / std


class Augment(Enum):  # data.augment: random transforms of the training split only (torchvision.transforms.v2)
    none = "none"
    flip = "flip"  # random horizontal flip
    trivialaugment = "trivialaugment"  # flip + TrivialAugmentWide
    randaugment = "randaugment"  # flip + RandAugment


class OnMismatch(Enum):
    error = "error"
    skip = "skip"


class AutoAlign(Enum):
    shape_order = "shape_order"  # pair what names leave unmatched by module order and shape


class BatchNormPolicy(Enum):  # freeze.bn: every BN layer no override names
    auto = "auto"  # statistics fixed while all of the layer's parameters are frozen, updated once any trains
    eval = "eval"  # the old spelling of auto (kept so configs written before `auto` behave as before)
    train = "train"  # statistics always updated
    frozen = "frozen"  # statistics and affine parameters fixed for the whole run


class BatchNormMode(Enum):  # freeze.bn_overrides[].mode: the layers an override selects
    train = "train"  # statistics always updated
    eval = "eval"  # statistics always fixed (the affine parameters train if selected)
    frozen = "frozen"  # statistics and affine parameters fixed for the whole run


class GradualOrder(Enum):
    head_first = "head_first"  # the block nearest the head first (ULMFiT)
    stem_first = "stem_first"


class OptimizerName(Enum):
    adamw = "adamw"
    adam = "adam"
    sgd = "sgd"


class SchedulerName(Enum):
    constant = "constant"  # every group at its own LR (times its warmup)
    cosine = "cosine"  # cosine from each group's LR to min_lr_mult x it, over the whole run
    linear = "linear"  # linear decay to min_lr_mult x the group's LR, over the whole run
    step = "step"  # x gamma every step_epochs epochs
    onecycle = "onecycle"  # torch OneCycleLR: up from lr/div_factor, cosine down to lr/div_factor/final_div_factor


@dataclass
class SourceConfig:
    path: Optional[str] = None  # checkpoint file; null = no weights (architecture only)
    key: str = "auto"  # nested dict key holding the weights ('state_dict', 'model', 'ema' ...)
    trust_pickle: bool = False  # allow full pickled nn.Module files (runs code from the file)
    model: Optional[Dict[str, Any]] = None  # a `_target_` node: build a source model in memory
    weights: Optional[str] = None  # torchvision weights enum, e.g. ResNet18_Weights.IMAGENET1K_V1
    strip_prefixes: Optional[List[str]] = None  # null = detect ('module.', '_orig_mod.' ...); [] = none
    add_prefix: Optional[str] = None  # put in front of source names (after stripping); null = detect
    meta_init: bool = True  # build the target on the meta device and assign loaded tensors (fast); false = build normally
    allow_nonfinite: bool = False  # load NaN / inf weights (e.g. to inspect a broken checkpoint); else an error
    allow_lossy_cast: bool = False  # load bool/int/complex into float (or the reverse), or floats that overflow the target


@dataclass
class ExpectConfig:
    missing: Optional[List[str]] = None  # selectors: exactly what may stay unloaded
    min_loaded: float = 0.0  # loaded target elements / all target elements

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_loaded) and 0.0 <= self.min_loaded <= 1.0):
            raise UserError(f"mapping.expect.min_loaded={self.min_loaded}: a fraction of the target's elements, "
                            "in [0, 1].")


@dataclass
class MappingConfig:
    rules: List[Dict[str, Any]] = field(default_factory=list)  # [{from: regex, to: template, op: ..., ...}]
    on_mismatch: OnMismatch = OnMismatch.error
    exclude: List[str] = field(default_factory=list)  # target selectors never loaded (a new head)
    expect: ExpectConfig = field(default_factory=ExpectConfig)
    auto: Optional[AutoAlign] = None  # shape_order: align tensors that names leave unmatched (off: null)


@dataclass
class UnfreezeEvent:
    epoch: Optional[int] = None  # 0-based: applied before this epoch trains (one of epoch / step)
    step: Optional[int] = None  # 0-based optimizer step over the whole run: applied before that step
    unfreeze: List[str] = field(default_factory=list)  # selectors made trainable
    freeze: List[str] = field(default_factory=list)  # selectors frozen again (gradient off, no decay)
    lr: Optional[float] = None  # own group at this LR for what it unfreezes
    lr_mult: Optional[float] = None  # ... or at optim.lr x lr_mult
    warmup_steps: Optional[int] = None  # linear warmup of the groups this event starts
    name: Optional[str] = None  # name of its group (default unfreeze@<epoch> / unfreeze@step<step>)

    def check(self, where: str) -> None:
        if (self.epoch is None) == (self.step is None):
            raise UserError(f"{where}: give epoch: N (applied before epoch N trains) or step: N (before optimizer "
                            f"step N), {'not both' if self.epoch is not None else 'one of them'}.")
        if self.epoch is not None and self.epoch < 0:
            raise UserError(f"{where}.epoch={self.epoch}: epochs count from 0 (epoch: 0 is before the first epoch).")
        if self.step is not None and self.step < 0:
            raise UserError(f"{where}.step={self.step}: steps count from 0.")
        if not self.unfreeze and not self.freeze:
            raise UserError(f"{where}: does nothing; give unfreeze: [selectors] and/or freeze: [selectors].")
        check_lr_fields(where, self.lr, self.lr_mult, self.warmup_steps)
        if not self.unfreeze and (self.lr is not None or self.lr_mult is not None or self.warmup_steps is not None):
            raise UserError(f"{where}: lr/lr_mult/warmup_steps apply to what an event unfreezes, and this one "
                            "unfreezes nothing. Drop them or add unfreeze: [selectors].")


@dataclass
class GradualConfig:
    """`freeze.gradual`: one more block unfrozen every `every` epochs (blocks: `freeze.blocks`); off without `every`."""

    every: Optional[int] = None  # epochs between two unfreezes; null = off
    order: GradualOrder = GradualOrder.head_first  # (formerly `from: head | stem`)
    start: Optional[int] = None  # epoch of the first unfreeze (default: `every`)
    lr: Optional[float] = None  # own group LR for the blocks it unfreezes
    lr_mult: Optional[float] = None
    warmup_steps: Optional[int] = None

    def __post_init__(self) -> None:
        if self.every is not None and self.every < 1:
            raise UserError(f"freeze.gradual.every={self.every}: unfreeze one block every N epochs, N >= 1.")
        if self.start is not None and self.start < 0:
            raise UserError(f"freeze.gradual.start={self.start}: the epoch of the first unfreeze, >= 0.")
        check_lr_fields("freeze.gradual", self.lr, self.lr_mult, self.warmup_steps)

    @property
    def enabled(self) -> bool:
        return self.every is not None

    @property
    def first_epoch(self) -> int:
        return (self.every or 1) if self.start is None else self.start


@dataclass
class BatchNormOverride:
    params: List[str] = MISSING  # selectors of BN layers (module names or their parameter names)
    mode: BatchNormMode = MISSING  # train | eval (statistics fixed) | frozen (statistics and affine fixed)


@dataclass
class FreezeConfig:
    trainable: Optional[List[str]] = None  # null = everything trainable (minus `frozen`)
    frozen: List[str] = field(default_factory=list)  # wins over `trainable`
    until: Optional[str] = None  # freeze every parameter up to and including this module (module order)
    bn: BatchNormPolicy = BatchNormPolicy.auto
    bn_overrides: List[BatchNormOverride] = field(default_factory=list)  # per-selector BN modes
    schedule: List[UnfreezeEvent] = field(default_factory=list)
    gradual: GradualConfig = field(default_factory=GradualConfig)  # {every: 1, order: head_first, ...}; off without every
    blocks: Optional[List[Any]] = None  # blocks stem -> head (selector or list of them); null = top-level modules

    def __post_init__(self) -> None:
        for i, ev in enumerate(self.schedule):
            ev.check(f"freeze.schedule[{i}]")
        by_step = {ev.step is not None for ev in self.schedule} | ({False} if self.gradual.enabled else set())
        if len(by_step) > 1:
            raise UserError("freeze.schedule: mixes epoch: and step: events (freeze.gradual counts as epoch events); "
                            "use one kind, since the steps per epoch are only known once the data is loaded.")


@dataclass
class ParamGroupConfig:
    params: List[str] = MISSING  # selectors
    lr: Optional[float] = None  # default optim.lr
    lr_mult: Optional[float] = None  # ... or optim.lr x lr_mult
    weight_decay: Optional[float] = None  # default optim.weight_decay
    name: Optional[str] = None  # shown in tables and metrics.csv (default: the first selector)
    warmup_steps: Optional[int] = None  # default optim.scheduler.warmup_steps
    betas: Optional[List[float]] = None  # adam/adamw (default optim.betas)
    eps: Optional[float] = None  # adam/adamw
    momentum: Optional[float] = None  # sgd (default optim.momentum)

    def check(self, where: str, optim: "OptimConfig") -> None:
        check_lr_fields(where, self.lr, self.lr_mult, self.warmup_steps)
        for key in ("weight_decay", "eps"):
            if getattr(self, key) is not None:
                check_number(f"{where}.{key}", getattr(self, key), 0, want="a finite number >= 0")
        if self.momentum is not None:
            check_number(f"{where}.momentum", self.momentum, 0, 1, high_open=True)
        if self.betas is not None:
            _check_betas(self.betas, f"{where}.betas", optim.name)
        if self.eps is not None and optim.name == OptimizerName.sgd:
            raise UserError(f"{where}.eps: eps is for adam/adamw, and optim.name=sgd.")
        if self.momentum is not None and optim.name != OptimizerName.sgd:
            raise UserError(f"{where}.momentum: momentum is for sgd; optim.name={optim.name.value} uses betas.")


def _check_betas(betas: List[float], where: str, name: OptimizerName) -> None:
    if name == OptimizerName.sgd:
        raise UserError(f"{where}: betas are for adam/adamw, and optim.name=sgd (use momentum).")
    if len(betas) != 2 or not all(math.isfinite(b) and 0 <= b < 1 for b in betas):
        raise UserError(f"{where}={list(betas)}: two numbers in [0, 1), e.g. [0.9, 0.999].")


@dataclass
class SchedulerConfig:
    name: SchedulerName = SchedulerName.constant
    warmup_steps: int = 0  # linear warmup of every group from the step it starts training
    min_lr_mult: float = 0.0  # cosine / linear: end at this fraction of each group's LR
    step_epochs: int = 1  # step: multiply by gamma every this many epochs
    gamma: float = 0.1  # step
    pct_start: float = 0.3  # onecycle: fraction of the run spent going up
    div_factor: float = 25.0  # onecycle: start at lr / div_factor
    final_div_factor: float = 1e4  # onecycle: end at lr / div_factor / final_div_factor

    def __post_init__(self) -> None:
        checks = [
            (self.warmup_steps >= 0, "warmup_steps", "a number of steps >= 0"),
            (0.0 <= self.min_lr_mult <= 1.0, "min_lr_mult", "a fraction of the group LR in [0, 1]"),
            (self.step_epochs >= 1, "step_epochs", "a number of epochs >= 1"),
            (self.gamma > 0, "gamma", "a factor > 0"),
            (0.0 < self.pct_start < 1.0, "pct_start", "a fraction of the run in (0, 1)"),
            (self.div_factor > 0 and self.final_div_factor > 0, "div_factor", "> 0 (and final_div_factor > 0)"),
        ]
        for ok, key, want in checks:
            if not ok or not math.isfinite(getattr(self, key)):
                raise UserError(f"optim.scheduler.{key}={getattr(self, key)}: must be {want}.")


@dataclass
class OptimConfig:
    name: OptimizerName = OptimizerName.adamw
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    betas: Optional[List[float]] = None  # adam/adamw; null = torch's (0.9, 0.999)
    groups: List[ParamGroupConfig] = field(default_factory=list)
    layer_decay: Optional[float] = None  # e.g. 0.75: block i below the head trains at lr x 0.75**i
    no_decay: Optional[List[str]] = None  # no weight decay: `bias`, `norm`, selectors; null = [bias, norm] for adamw
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self) -> None:
        check_number("optim.lr", self.lr, 0, want="a finite number >= 0")
        check_number("optim.weight_decay", self.weight_decay, 0, want="a finite number >= 0")
        check_number("optim.momentum", self.momentum, 0, 1, high_open=True)
        if self.layer_decay is not None and not (math.isfinite(self.layer_decay) and 0 < self.layer_decay <= 1):
            raise UserError(f"optim.layer_decay={self.layer_decay}: must be in (0, 1]; block k below the head trains "
                            "at optim.lr x layer_decay**k (0.75 is usual).")
        if self.betas is not None:
            _check_betas(self.betas, "optim.betas", self.name)
        for i, g in enumerate(self.groups):
            g.check(f"optim.groups[{i}]", self)


DATA_TARGET_KEYS = ("num_workers", "target_key")  # a data `_target_` node's keys that are ours, not the callable's


@dataclass
class DataConfig:
    name: str = "digits"  # digits | image_folder | synthetic (or the `_target_` of your own data)
    root: Optional[str] = None  # image_folder: a folder of class folders (or train/, val/ and optional test/)
    classes: Optional[List[Any]] = None  # digits: which digits; image_folder: which class folders
    image_size: Optional[int] = 8  # digits/synthetic: pixels; image_folder: the crop (null = the preset's)
    channels: int = 1  # 1 or 3 (digits are grey; 3 repeats the channel for RGB models)
    val_fraction: float = 0.2
    mean: Optional[List[float]] = None  # normalisation; null = the dataset's (or the preset's) own
    std: Optional[List[float]] = None
    num_samples: int = 512  # synthetic only
    num_classes: int = 5  # synthetic only
    num_workers: int = 0
    skip_bad_images: bool = False  # image_folder: leave out files that cannot be decoded (counted) instead of failing
    preset: ImagePreset = ImagePreset.auto  # image resize / crop / normalisation (image_folder, predict on files)
    augment: Augment = Augment.none  # image_folder: random transforms of the training split
    mixup: float = 0.0  # classification: MixUp alpha on training batches (e.g. 0.2); 0 = off
    cutmix: float = 0.0  # classification: CutMix alpha on training batches (e.g. 1.0); 0 = off
    target_key: str = "labels"  # dict items: the target's key; the other keys go to the model as keyword arguments
    target: Optional[Dict[str, Any]] = None  # your own data: the `_target_` node (set from `data._target_`)

    def __post_init__(self) -> None:
        if self.image_size is not None:
            check_count("data.image_size", self.image_size, 1, MAX_IMAGE_SIZE,
                        want=f"a whole number of pixels from 1 to {MAX_IMAGE_SIZE}")
        if self.channels not in (1, 3):
            raise UserError(f"data.channels={self.channels}: choose 1 (grey) or 3 (RGB).")
        check_number("data.val_fraction", self.val_fraction, 0, 1, low_open=True, high_open=True,
                     want="a fraction between 0 and 1 (both excluded): the share of each class kept for validation")
        check_count("data.num_workers", self.num_workers, 0, 256)
        check_count("data.num_samples", self.num_samples, 2)
        check_count("data.num_classes", self.num_classes, 2)
        for key in ("mixup", "cutmix"):
            check_number(f"data.{key}", getattr(self, key), 0, 100,
                         want="a Beta distribution alpha > 0 (e.g. 0.2 for mixup, 1.0 for cutmix), or 0 for off")
        if not self.target_key.strip():
            raise UserError("data.target_key: empty; name the key of the target in your dict items (e.g. labels).")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is None:
                continue
            if len(values) not in (1, self.channels):
                raise UserError(f"data.{key}={list(values)}: give 1 value or one per channel ({self.channels}, "
                                "data.channels).")
            for i, v in enumerate(values):
                check_number(f"data.{key}[{i}]", v, 0 if key == "std" else None, low_open=key == "std",
                             want="a finite number > 0 (a std of 0 divides by zero)" if key == "std" else "")
        if self.name == "digits" and self.classes is not None and self.target is None:
            wanted = list(self.classes)
            if not wanted or len(set(wanted)) != len(wanted) or not all(_is_count(c) and 0 <= c <= 9 for c in wanted):
                raise UserError(f"data.classes={wanted}: digits are 0-9, each at most once, at least one.")


def data_config(node: Any) -> DataConfig:
    """`data` as composed: the built-in node (typed by conf/data's schema), or your own `_target_` node.

    A `_target_` node is free-form (its keys are the callable's arguments) except for
    DATA_TARGET_KEYS, which configure the loaders; anything else is checked against DataConfig.
    """
    if node is None:
        return DataConfig()
    if isinstance(node, DataConfig):
        return node
    node = dict(node)
    if "_target_" in node:
        ours = {k: node.pop(k) for k in DATA_TARGET_KEYS if k in node}
        if not isinstance(node["_target_"], str) or not node["_target_"].strip():
            raise UserError(f"data._target_={node['_target_']!r}: the dotted path of a function (or class) that "
                            "returns the splits, e.g. my_data.splits.")
        return DataConfig(name=node["_target_"], target=node, **ours)
    from omegaconf.errors import ConfigKeyError, ValidationError

    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), node))  # type: ignore[return-value]
    except (ConfigKeyError, ValidationError) as e:
        raise UserError(f"data.{getattr(e, 'key', '') or ''}: {str(e).splitlines()[0]} (the built-in data keys are "
                        f"{', '.join(f.name for f in DataConfig.__dataclass_fields__.values())}; your own data "
                        "needs data._target_).") from None


class FinalWeights(Enum):  # what model.safetensors holds at the end of a run
    last = "last"  # the weights after the last epoch
    best = "best"  # the weights of the epoch where trainer.monitor was best (checkpoints/best.safetensors)


# what each task measures (training/metrics.py computes them); monitor names are <split>_<metric>
TASK_METRICS = {
    Task.classification: {"train": ("loss", "acc"), "val": ("loss", "acc", "top5_acc")},
    Task.multilabel: {"train": ("loss", "acc", "f1"), "val": ("loss", "acc", "f1")},
    Task.regression: {"train": ("loss", "mae", "rmse"), "val": ("loss", "mae", "rmse")},
}
DEFAULT_MONITOR = {Task.classification: "val_acc", Task.multilabel: "val_f1", Task.regression: "val_loss"}


def monitor_names(task: Task, ema: bool) -> list[str]:
    names = [f"{split}_{m}" for split, metrics in TASK_METRICS[task].items() for m in metrics]
    return names + ([f"ema_val_{m}" for m in TASK_METRICS[task]["val"]] if ema else [])


LOGGERS = ("csv", "tensorboard")


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
    epochs: int = 6
    batch_size: int = 64
    precision: str = "32"  # 32 | bf16 | 16
    limit_train_batches: Optional[int] = None  # cap batches per epoch (smoke tests)
    limit_val_batches: Optional[int] = None
    grad_clip: Optional[float] = None
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
    cache_features: bool = False  # frozen backbone: compute its outputs once, train the head on them

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
        if self.resume is not None and not self.resume.strip():
            raise UserError("trainer.resume: empty; give auto (the run in hydra.run.dir) or a path to a last.pt.")


@dataclass
class PredictConfig:
    input: Optional[str] = None  # an image file or a folder of them (any depth); null = the data's test split (else val)
    top_k: int = 5  # classification: the k most likely classes in predictions.csv
    threshold: float = 0.5  # multilabel: a label is predicted when its probability reaches this

    def __post_init__(self) -> None:
        check_count("predict.top_k", self.top_k, 1, want="a whole number of classes >= 1")
        check_number("predict.threshold", self.threshold, 0, 1, want="a probability in [0, 1]")
        if self.input is not None and not self.input.strip():
            raise UserError("predict.input: empty; give an image file or a folder of images (or null: the data's "
                            "test split).")


MODEL_OUTPUT_KEY = "output"  # model.output: ours (which part of the model's return value are the logits), not the model's


@dataclass
class RunConfig:
    mode: Mode = Mode.train
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    source: SourceConfig = field(default_factory=SourceConfig)
    task: Task = Task.classification
    model: Dict[str, Any] = MISSING  # `_target_` and its arguments; `output`: where the logits are in what it returns
    mapping: MappingConfig = field(default_factory=MappingConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: Any = None  # DataConfig (conf/data's files are typed by it) or your own `_target_` node; see data_config
    loss: Optional[Dict[str, Any]] = None  # a `_target_` node (conf/loss); null = the task's (cross-entropy, BCE, MSE)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    logger: List[str] = field(default_factory=lambda: ["csv"])  # csv (always) and tensorboard

    def __post_init__(self) -> None:
        """The checks that span nodes; each node checked its own values when it was built."""
        self.data = data_config(self.data)
        output = self.model.get(MODEL_OUTPUT_KEY) if isinstance(self.model, dict) else None
        if output is not None and (isinstance(output, bool) or not isinstance(output, (int, str)) or output == ""):
            raise UserError(f"model.output={output!r}: where the logits are in what the model returns: a tuple index "
                            "(e.g. 0), or a dict key / attribute name (e.g. logits); null when it returns a tensor.")
        t = self.trainer
        allowed = monitor_names(self.task, t.ema.decay is not None)
        if t.monitor is None:
            t.monitor = DEFAULT_MONITOR[self.task]
        elif t.monitor not in allowed:
            ema_hint = (" (ema_* metrics need trainer.ema.decay)" if t.monitor.startswith("ema_") and t.ema.decay is None
                        else "")
            raise UserError(f"trainer.monitor={t.monitor!r}: task={self.task.value} measures {', '.join(allowed)}"
                            f"{ema_hint}.{did_you_mean(t.monitor, allowed)}")
        if self.mode == Mode.predict and self.source.path is None and self.source.model is None \
                and self.source.weights is None:
            raise UserError("mode=predict: source.path is null, so the model would predict from random weights. Give "
                            "the trained weights: source.path=outputs/<run>/model.safetensors (or a checkpoint).")
        if self.task != Task.classification and (self.data.mixup or self.data.cutmix):
            raise UserError(f"data.mixup / data.cutmix: mix class labels, and task={self.task.value}; set them to 0.")
        if not DEVICE.fullmatch(self.device):
            raise UserError(f"device={self.device!r}: choose auto, cpu, cuda or cuda:N.")
        check_count("seed", self.seed, 0, 2**32 - 1)
        bad = [n for n in self.logger if n not in LOGGERS]
        if bad:
            raise UserError(f"logger: {bad[0]!r} is not a logger; choose from {', '.join(LOGGERS)} (csv is always on).")
        epochs = self.trainer.epochs
        if self.trainer.resume is not None and self.mode != Mode.train:
            raise UserError(f"trainer.resume: resumes training, and mode={self.mode.value}; drop trainer.resume.")
        if self.mode == Mode.train and epochs < 1:
            raise UserError(f"trainer.epochs={epochs}: train at least one epoch (or use mode=plan).")
        for i, ev in enumerate(self.freeze.schedule):
            if self.mode == Mode.train and ev.epoch is not None and ev.epoch >= epochs:
                raise UserError(f"freeze.schedule[{i}].epoch={ev.epoch}: the run trains epochs 0..{epochs - 1} "
                                f"(trainer.epochs={epochs}), so this event would never happen. Lower the epoch or "
                                "raise trainer.epochs.")


def register_configs() -> None:
    """Put the schema into Hydra's ConfigStore (conf/config.yaml lists `config_schema` first)."""
    from hydra.core.config_store import ConfigStore

    from .hydra_resolvers import fresh_dir, job_device

    ConfigStore.instance().store(name="config_schema", node=RunConfig)
    ConfigStore.instance().store(group="data", name="builtin_schema", node=DataConfig)  # conf/data/*.yaml start from it
    if not OmegaConf.has_resolver("fresh_dir"):  # cached: one process asks once and keeps the answer
        OmegaConf.register_new_resolver("fresh_dir", fresh_dir, use_cache=True)
    if not OmegaConf.has_resolver("job_device"):
        OmegaConf.register_new_resolver("job_device", job_device)


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Composed DictConfig -> plain dataclasses (the only place OmegaConf objects are converted)."""
    from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

    if OmegaConf.get_type(cfg) is not RunConfig:  # a run's own .hydra/config.yaml (a re-run): typed here
        try:
            cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
        except (ConfigKeyError, ValidationError) as e:
            raise UserError(f"{getattr(e, 'full_key', '') or 'config'}: {str(e).splitlines()[0]} (the config does "
                            "not fit this version's schema; compose it from conf/ instead).") from None
    try:
        obj = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as e:
        raise UserError(f"{e.full_key}: has no value (it is '???' in the config); set it, "
                        f"e.g. python run.py {e.full_key}=...") from None
    assert isinstance(obj, RunConfig), type(obj)
    return obj
