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


class BatchNormPolicy(Enum):
    eval = "eval"  # BN layers whose parameters are all frozen keep their running statistics
    train = "train"  # every BN layer updates its statistics while training
    frozen = "frozen"  # every BN layer: statistics and affine parameters frozen


class OptimizerName(Enum):
    adamw = "adamw"
    adam = "adam"
    sgd = "sgd"


@dataclass
class SourceConfig:
    path: Optional[str] = None  # checkpoint file; null = no weights (architecture only)
    key: str = "auto"  # nested dict key holding the weights ('state_dict', 'model', 'ema' ...)
    trust_pickle: bool = False  # allow full pickled nn.Module files (runs code from the file)
    model: Optional[Dict[str, Any]] = None  # a `_target_` node: build a source model in memory
    weights: Optional[str] = None  # torchvision weights enum, e.g. ResNet18_Weights.IMAGENET1K_V1
    strip_prefixes: Optional[List[str]] = None  # null = detect ('module.', '_orig_mod.' ...)


@dataclass
class ExpectConfig:
    missing: Optional[List[str]] = None  # selectors: exactly what may stay unloaded
    min_loaded: float = 0.0  # loaded target elements / all target elements


@dataclass
class MappingConfig:
    rules: List[Dict[str, Any]] = field(default_factory=list)  # [{from: regex, to: template}]
    on_mismatch: OnMismatch = OnMismatch.error
    exclude: List[str] = field(default_factory=list)  # target selectors never loaded (a new head)
    expect: ExpectConfig = field(default_factory=ExpectConfig)


@dataclass
class UnfreezeEvent:
    epoch: int = MISSING  # 0-based: applied before this epoch trains
    unfreeze: List[str] = MISSING  # selectors
    lr: Optional[float] = None  # LR for what this event unfreezes (default optim.lr)


@dataclass
class FreezeConfig:
    trainable: Optional[List[str]] = None  # null = everything trainable (minus `frozen`)
    frozen: List[str] = field(default_factory=list)  # wins over `trainable`
    bn: BatchNormPolicy = BatchNormPolicy.eval
    schedule: List[UnfreezeEvent] = field(default_factory=list)


@dataclass
class ParamGroupConfig:
    params: List[str] = MISSING  # selectors
    lr: Optional[float] = None  # default optim.lr
    weight_decay: Optional[float] = None  # default optim.weight_decay
    name: Optional[str] = None  # shown in tables and metrics.csv (default: the first selector)


@dataclass
class OptimConfig:
    name: OptimizerName = OptimizerName.adamw
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    groups: List[ParamGroupConfig] = field(default_factory=list)


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
