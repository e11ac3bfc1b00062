"""`Run`: what a run's steps share (pipeline.STEPS, results.py, mapping_steps.py): the inputs, then what
each step made for the next."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .schema import RunConfig


@dataclass
class Run:
    """What the steps share: the inputs, then what each step made for the next."""

    cfg: RunConfig
    run_dir: Path
    summary: dict[str, Any]
    device: Any = None  # torch.device
    model: Any = None  # the target nn.Module
    report: Any = None  # mapping.report.LoadReport
    weights: Any = None  # sources.read.SourceWeights (None: architecture only)
    freeze: Any = None  # tuning.freezing.FreezePlan
    groups: list = field(default_factory=list)  # tuning.param_groups.GroupSpec
    optimizer: Any = None
    data: Any = None  # training.data.DataBundle
    loaders: tuple = ()  # (train, val)
    task: Any = None  # training.task.TaskMetrics: the loss and the metrics
    resume_state: Any = None  # a full-state checkpoint to continue from (trainer.resume)
    signals: Any = None  # StopSignals: whether a Ctrl-C / SIGTERM asked the loop to stop
    engine: Any = None  # training.engine.Engine: how steps run (precision, compile, DDP, accumulation)
    group: Any = None  # training.distributed.Group under torchrun (None in a single process)
    main_dir: Path | None = None  # rank 0's run folder (under torchrun the other ranks run in folders of their own)
    source_hash: Any = None  # training.outputs.BackgroundHash of the source files, while it runs
