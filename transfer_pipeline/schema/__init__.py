"""Structured configs: the public config interface, checked by OmegaConf before anything runs.

Every node is a dataclass registered in Hydra's ConfigStore, so `optim.lrr=0.1` or a misspelt
`mode=trian` fails at composition time with the key and the valid choices. Only `model`,
`source.model` and mapping rules are free-form (their keys are the model's own arguments).
One module per config group; checks.py (value checks), options.py (the Python API's keyword
arguments -> these dataclasses), resolvers.py (the `${...}` resolvers the configs use).

May import errors and files only (and Hydra/OmegaConf): every `python run.py` imports it, so no torch.
reference.py writes docs/config-reference.md from these dataclasses.

Range and consistency checks live here too, next to the fields they check: each node's
`__post_init__` checks its own values (and its list entries, whose index it knows), and
`RunConfig.__post_init__` the checks that span nodes (an event after the last epoch). They
run when the composed config becomes dataclasses (`to_run_config`) and when the Python API
builds a node from keyword arguments, so a bad value fails before anything runs, naming the
key, the value and the valid range. What needs the model (selectors, shapes) is checked later.

One module per group (source.py: source + mapping, tuning.py: freeze + optim, data.py: data +
predict, trainer.py, task.py, adapters.py); here the top level (RunConfig) and the way in from
Hydra. Every name is importable from `transfer_pipeline.schema`. Light on purpose: no torch import, it runs
before every command.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List

from omegaconf import MISSING, DictConfig, OmegaConf

from .adapters import AdapterMethod, AdaptersConfig, refuse_unsupported  # noqa: F401
from .checks import check_count
from ..errors import UserError, did_you_mean, not_a_key
from .data import (  # noqa: F401
    DATA_TARGET_KEYS,
    MAX_IMAGE_SIZE,
    Augment,
    DataConfig,
    ImagePreset,
    PredictConfig,
    Shift,
    data_config,
)
from .weight_space import InterpolateConfig, SoupConfig, SoupExport  # noqa: F401
from .source import AutoAlign, ExpectConfig, MappingConfig, OnMismatch, SourceConfig, VerifyConfig  # noqa: F401
from .task import DEFAULT_MONITOR, TASK_METRICS, Task, monitor_names  # noqa: F401
from .trainer import (  # noqa: F401
    LOGGERS,
    PRECISIONS,
    EarlyStoppingConfig,
    EMAConfig,
    FinalWeights,
    FsdpConfig,
    Strategy,
    TrainerConfig,
)
from .tuning import (  # noqa: F401
    BatchNormMode,
    BatchNormOverride,
    BatchNormPolicy,
    FreezeConfig,
    GradualConfig,
    GradualOrder,
    L2SPConfig,
    OptimConfig,
    OptimizerName,
    ParamGroupConfig,
    Regularizer,
    SchedulerConfig,
    SchedulerName,
    UnfreezeEvent,
)

DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


class Mode(Enum):
    train = "train"  # load, freeze, train, write everything
    plan = "plan"  # build the model and the load plan, write load_report.json, train nothing
    eval = "eval"  # load and evaluate on the validation split, no training
    export = "export"  # load and write model.safetensors (target names), no data, no training
    predict = "predict"  # a trained model's predictions on image files or a data split -> predictions.csv
    interpolate = "interpolate"  # WiSE-FT: weights between the source's and a fine-tuned run's, the best exported
    soup = "soup"  # model soups: a sweep's fine-tuned weights averaged (uniform, greedy), the soup exported


MODEL_OUTPUT_KEY = "output"  # model.output: ours (which part of the model's return value are the logits), not the model's


@dataclass
class RunConfig:
    mode: Mode = Mode.train  # what the run does: train, plan, eval, export, predict, interpolate or soup
    seed: int = 0  # seeds the new layers' initialisation, the validation split and the shuffling
    device: str = "auto"  # where to run: auto (CUDA if present) | cpu | cuda | cuda:N
    source: SourceConfig = field(default_factory=SourceConfig)
    task: Task = Task.classification  # what the targets are: picks the loss, the metrics and trainer.monitor's default
    model: Dict[str, Any] = MISSING  # `_target_` and its arguments; `output`: where the logits are in what it returns
    mapping: MappingConfig = field(default_factory=MappingConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: Any = None  # DataConfig (conf/data's files are typed by it) or your own `_target_` node; see data_config
    loss: Any = None  # a `_target_` node (conf/loss); null = the task's (cross-entropy, BCE, MSE)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    adapters: AdaptersConfig = field(default_factory=AdaptersConfig)  # LoRA / DoRA on a frozen base (docs/adapters.md)
    predict: PredictConfig = field(default_factory=PredictConfig)
    interpolate: InterpolateConfig = field(default_factory=InterpolateConfig)  # mode=interpolate (WiSE-FT)
    soup: SoupConfig = field(default_factory=SoupConfig)  # mode=soup (model soups)
    logger: List[str] = field(default_factory=lambda: ["csv"])  # metric writers: csv (always on), tensorboard

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
        self.interpolate.check(self.mode == Mode.interpolate)
        self.soup.check(self.mode == Mode.soup)
        bad = [n for n in self.logger if n not in LOGGERS]
        if bad:
            raise UserError(f"logger: {bad[0]!r} is not a logger; choose from {', '.join(LOGGERS)} (csv is always on).")
        epochs = self.trainer.epochs
        if self.trainer.resume is not None and self.mode != Mode.train:
            raise UserError(f"trainer.resume: resumes training, and mode={self.mode.value}; drop trainer.resume.")
        if self.mode == Mode.train and epochs < 1:
            raise UserError(f"trainer.epochs={epochs}: train at least one epoch (or use mode=plan).")
        refuse_unsupported(self)  # what adapters do not work with yet
        for i, ev in enumerate(self.freeze.schedule):
            if self.mode == Mode.train and ev.epoch is not None and ev.epoch >= epochs:
                raise UserError(f"freeze.schedule[{i}].epoch={ev.epoch}: the run trains epochs 0..{epochs - 1} "
                                f"(trainer.epochs={epochs}), so this event would never happen. Lower the epoch or "
                                "raise trainer.epochs.")


def register_configs() -> None:
    """Put the schema into Hydra's ConfigStore (conf/config.yaml lists `config_schema` first)."""
    from hydra.core.config_store import ConfigStore

    from .resolvers import fresh_dir, job_device

    ConfigStore.instance().store(name="config_schema", node=RunConfig)
    ConfigStore.instance().store(group="data", name="builtin_schema", node=DataConfig)  # conf/data/*.yaml start from it
    if not OmegaConf.has_resolver("fresh_dir"):  # cached: one process asks once and keeps the answer
        OmegaConf.register_new_resolver("fresh_dir", fresh_dir, use_cache=True)
    if not OmegaConf.has_resolver("job_device"):
        OmegaConf.register_new_resolver("job_device", job_device)


def _added_keys(node: Any, path: str) -> Iterator[tuple[str, list[str]]]:
    """(dotted key, the node's own keys) for each key that `+key=...` added to a typed node: Hydra lets `+`
    add any key, and converting to the dataclasses would drop it without a word (`+trainer.epoch=3`)."""
    import dataclasses

    from omegaconf import ListConfig

    if isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from _added_keys(node._get_node(i), f"{path.rstrip('.')}[{i}].")
        return
    if not isinstance(node, DictConfig) or node._is_none() or node._is_missing():
        return
    kind = OmegaConf.get_type(node)
    known = [f.name for f in dataclasses.fields(kind)] if dataclasses.is_dataclass(kind) else None
    for key in node.keys():
        if known is not None and key not in known:
            yield f"{path}{key}", known
        elif known is not None:
            yield from _added_keys(node._get_node(key), f"{path}{key}.")


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Composed DictConfig -> plain dataclasses (the only place OmegaConf objects are converted)."""
    from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

    if OmegaConf.get_type(cfg) is not RunConfig:  # a run's own .hydra/config.yaml (a re-run): typed here
        try:
            cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
        except (ConfigKeyError, ValidationError) as e:
            raise UserError(f"{getattr(e, 'full_key', '') or 'config'}: {str(e).splitlines()[0]} (the config does "
                            "not fit this version's schema; compose it from conf/ instead).") from None
    extra = next(_added_keys(cfg, ""), None)
    if extra is not None:
        key, known = extra  # worded as run.py words Hydra's "Could not override" (errors.not_a_key)
        raise UserError(not_a_key(key, known, " (added with +, which only free-form nodes take: model, source.model, "
                                              "a data._target_ node, loss)"))
    try:
        obj = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as e:
        raise UserError(f"{e.full_key}: has no value (it is '???' in the config); set it, "
                        f"e.g. python run.py {e.full_key}=...") from None
    assert isinstance(obj, RunConfig), type(obj)
    return obj
