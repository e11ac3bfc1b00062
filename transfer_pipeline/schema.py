"""Structured configs: the public config interface, checked by OmegaConf before anything runs.

Every node is a dataclass registered in Hydra's ConfigStore, so `optim.lrr=0.1` or a misspelt
`mode=trian` fails at composition time with the key and the valid choices. Only `model`,
`source.model` and mapping rules are free-form (their keys are the model's own arguments).
This module is light on purpose: no torch import, it runs before every command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf


class Mode(Enum):
    train = "train"  # load, freeze, train, write everything
    plan = "plan"  # build the model and the load plan, write load_report.json, train nothing
    eval = "eval"  # load and evaluate on the validation split, no training
    export = "export"  # load and write model.safetensors (target names), no data, no training


class OnMismatch(Enum):
    error = "error"
    skip = "skip"


class AutoAlign(Enum):
    shape_order = "shape_order"  # pair what names leave unmatched by module order and shape


class BatchNormPolicy(Enum):
    eval = "eval"  # BN layers whose parameters are all frozen keep their running statistics
    train = "train"  # every BN layer updates its statistics while training
    frozen = "frozen"  # every BN layer: statistics and affine parameters frozen


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


@dataclass
class ExpectConfig:
    missing: Optional[List[str]] = None  # selectors: exactly what may stay unloaded
    min_loaded: float = 0.0  # loaded target elements / all target elements


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


@dataclass
class BatchNormOverride:
    params: List[str] = MISSING  # selectors of BN layers (module names or their parameter names)
    mode: BatchNormPolicy = MISSING  # train | eval (statistics fixed) | frozen (statistics and affine fixed)


@dataclass
class FreezeConfig:
    trainable: Optional[List[str]] = None  # null = everything trainable (minus `frozen`)
    frozen: List[str] = field(default_factory=list)  # wins over `trainable`
    until: Optional[str] = None  # freeze every parameter up to and including this module (module order)
    bn: BatchNormPolicy = BatchNormPolicy.eval
    bn_overrides: List[BatchNormOverride] = field(default_factory=list)  # per-selector BN modes
    schedule: List[UnfreezeEvent] = field(default_factory=list)
    gradual: Optional[Dict[str, Any]] = field(default_factory=dict)  # {every: 1, from: head, ...}; {} = off
    blocks: Optional[List[Any]] = None  # blocks stem -> head (selector or list of them); null = top-level modules


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


@dataclass
class DataConfig:
    name: str = "digits"  # digits | image_folder | synthetic
    root: Optional[str] = None  # image_folder: a folder of class folders (or train/ and val/)
    classes: Optional[List[Any]] = None  # digits: which digits; image_folder: which class folders
    image_size: int = 8
    channels: int = 1  # 1 or 3 (digits are grey; 3 repeats the channel for RGB models)
    val_fraction: float = 0.2
    mean: Optional[List[float]] = None  # normalisation; null = the dataset's own default
    std: Optional[List[float]] = None
    num_samples: int = 512  # synthetic only
    num_classes: int = 5  # synthetic only
    num_workers: int = 0


@dataclass
class TrainerConfig:
    epochs: int = 6
    batch_size: int = 64
    precision: str = "32"  # 32 | bf16 | 16
    limit_train_batches: Optional[int] = None  # cap batches per epoch (smoke tests)
    limit_val_batches: Optional[int] = None
    grad_clip: Optional[float] = None
    save_checkpoints: bool = True  # checkpoints/last.safetensors after every epoch
    keep_epoch_checkpoints: bool = False  # also checkpoints/epoch_<N>.safetensors for every epoch


@dataclass
class RunConfig:
    mode: Mode = Mode.train
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    source: SourceConfig = field(default_factory=SourceConfig)
    model: Dict[str, Any] = MISSING  # `_target_` and its arguments
    mapping: MappingConfig = field(default_factory=MappingConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def register_configs() -> None:
    """Put the schema into Hydra's ConfigStore (conf/config.yaml lists `config_schema` first)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="config_schema", node=RunConfig)


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Composed DictConfig -> plain dataclasses (the only place OmegaConf objects are converted)."""
    from omegaconf.errors import MissingMandatoryValue

    from .errors import UserError

    try:
        obj = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as e:
        raise UserError(f"{e.full_key}: has no value (it is '???' in the config); set it, "
                        f"e.g. python run.py {e.full_key}=...") from None
    assert isinstance(obj, RunConfig), type(obj)
    return obj
