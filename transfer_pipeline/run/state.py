"""`Run`: what a run's steps share (recipe.STEPS, endings.py, load_aids.py): the inputs, then what
each step made for the next."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..schema import RunConfig

if TYPE_CHECKING:  # types only: a step imports the heavy modules itself, when it runs
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    from ..data.datasets import DataBundle
    from ..mapping.report import LoadReport
    from ..model_parts import ModelParts
    from ..sources.read import SourceWeights
    from ..training.distributed import Group
    from ..training.engine import Engine
    from ..training.task import TaskMetrics
    from ..tuning.adapters import AdapterPlan
    from ..tuning.freezing import FreezePlan
    from ..tuning.param_groups import GroupSpec
    from .signals import StopSignals
    from .provenance import BackgroundHash


@dataclass
class Run:
    """What the steps share: the inputs, then what each step made for the next (None until it is made)."""

    cfg: RunConfig
    run_dir: Path
    summary: dict[str, Any]
    device: torch.device | None = None
    model: nn.Module | None = None  # the target
    model_node: dict[str, Any] | None = None  # the target's config node as built (model.num_classes filled in)
    parts: ModelParts | None = None  # @head / @blocks of the target (model_parts.py), found by plan
    report: LoadReport | None = None
    weights: SourceWeights | None = None  # None: architecture only
    freeze: FreezePlan | None = None
    groups: list[GroupSpec] = field(default_factory=list)
    optimizer: torch.optim.Optimizer | None = None
    data: DataBundle | None = None
    loaders: tuple[DataLoader, ...] = ()  # (train, val)
    task: TaskMetrics | None = None  # the loss and the metrics
    resume_state: dict[str, Any] | None = None  # a full-state checkpoint to continue from (trainer.resume)
    shard_plan: Any = None  # trainer.strategy=fsdp: the FSDP units (training/sharding.py), planned by tune
    extra_loaders: dict[str, Any] = field(default_factory=dict)  # the data's extra splits (e.g. data.shift's `shifted`)
    l2_sp: Any = None  # optim.regularize=l2_sp: the anchors and strengths (tuning/l2_sp.py)
    sharded_load: Any = None  # trainer.strategy=fsdp: rank 0 loaded, the shards take it by broadcast (sharded_load.py)
    signals: StopSignals | None = None  # whether a Ctrl-C / SIGTERM asked the loop to stop
    engine: Engine | None = None  # how steps run (precision, compile, DDP, accumulation)
    group: Group | None = None  # the process group under torchrun (None in a single process)
    main_dir: Path | None = None  # rank 0's run folder (under torchrun the other ranks run in folders of their own)
    source_hash: BackgroundHash | None = None  # of the source files, while it runs
    adapters: AdapterPlan | None = None  # adapters=lora | dora: the targets and what trains (run/adapting.py)
    peft_model: Any = None  # peft's wrapper of `model` (adapted in place): saves the adapter and merges
