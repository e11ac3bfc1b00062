"""The `fit` step: the training loop with everything around it that keeps a run's work.

Per epoch: metrics.csv (and TensorBoard), checkpoints/last.safetensors (weights) and
checkpoints/last.pt (the full state, training/checkpoint.py; under trainer.strategy=fsdp the folder
checkpoints/last.dcp/ that every rank writes its shards to, sharded_checkpoint.py), checkpoints/best.safetensors at a
new best of `trainer.monitor`, the EMA's weights, early stopping. A stop request (Ctrl-C,
SIGTERM) finishes the step, writes last.pt with the position inside the epoch, and ends the run
as interrupted with the command that resumes it. curves.png is drawn however the run ends.
The loop (loop.py) writes nothing itself: RunKeeper's callbacks do, and `fit` writes the final
model.safetensors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..schema import FinalWeights, RunConfig, TrainerConfig
from ..tuning.freezing import FreezePlan
from ..tuning.lr_schedule import LRSchedule
from . import checkpoint
from .. import files
from ..errors import UserError
from .curves import write_curves
from .engine import Engine
from .evaluate import evaluate
from .loggers import make_loggers
from .loop import StopTraining, TrainContext, steps_per_epoch, train
from .position import Position, TrainState
from .monitor import Best, EarlyStop, make_ema, monitor_mode
from .progress import bar_factory
from .task import TaskMetrics

log = logging.getLogger(__name__)


@dataclass
class FitJob:
    """What `fit` trains and what it needs to keep the run's work.

    `task`: task.TaskMetrics (loss, metrics); `resume`: a loaded checkpoints/last.pt to continue from;
    `on_event`: gets the freeze plan's events as they fire; `plan_text`: the load table the loggers
    start with; `source`: where the weights came from (model.safetensors metadata); `weights_meta`:
    extra metadata of the weights files (class names); `write_weights`: writes model.safetensors
    instead of `write_final_weights` (adapters: adapter/ and the merged weights).
    """

    cfg: RunConfig
    run_dir: Path
    model: nn.Module
    optimizer: Any
    freeze: FreezePlan
    loaders: tuple
    engine: Engine
    task: TaskMetrics
    schedule: LRSchedule | None
    stop_requested: Callable[[], bool]
    on_event: Callable
    plan_text: str
    source: str
    resume: dict[str, Any] | None = None
    weights_meta: dict[str, str] | None = None
    # the final weights' writer (job, best, the weights gathered from a sharded model or None); None: write_final_weights
    write_weights: Callable[[FitJob, Best, dict[str, torch.Tensor] | None], None] | None = None
    main_dir: Path | None = None  # rank 0's run folder (under torchrun the others run in temporary ones): last.dcp's
    extra_loaders: dict[str, Any] = field(default_factory=dict)  # extra splits, evaluated every epoch beside val


@dataclass
class FitResult:
    state: TrainState
    best: Best
    interrupted: bool = False
    cached: str | None = None  # the head trained on cached features (trainer.cache_features)
    notes: list[str] = field(default_factory=list)


def fit(job: FitJob) -> FitResult:
    """Train every epoch of `job.cfg.trainer`, keeping checkpoints, best, EMA, early stopping, loggers and curves."""
    keeper = RunKeeper(job)
    result = FitResult(keeper.state, keeper.best, cached=keeper.head_name)
    try:
        train(keeper.train_context(), keeper.state)
    except StopTraining:
        result.interrupted = True
    finally:
        keeper.close()
    if not result.interrupted:  # sharded: gathered on every rank (a collective), written by rank 0
        weights = full_weights(job.model) if job.engine.sharded else None
        if keeper.main:
            (job.write_weights or write_final_weights)(job, keeper.best, weights)
    return result


def full_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """trainer.strategy=fsdp: the whole weights on rank 0 ({} elsewhere); every rank must call it."""
    from .sharding import full_state_dict

    return full_state_dict(model)


class RunKeeper:
    """The loop's callbacks that keep a run's work: checkpoints, weights, best, EMA, early stopping, loggers."""

    def __init__(self, job: FitJob) -> None:
        self.job = job
        t = self.t = job.cfg.trainer
        model = job.model
        self.train_loader, self.val_loader = job.loaders
        self.ckpt_dir = job.run_dir / "checkpoints"
        self.shared_ckpt_dir = (job.main_dir or job.run_dir) / "checkpoints"  # where every rank writes last.dcp
        self.state = TrainState()
        self.main = job.engine.is_main  # under torchrun only rank 0 writes files
        self.ema = make_ema(model, t.ema.decay) if t.ema.decay is not None else None
        self.best = Best(t.monitor, monitor_mode(t.monitor, t.monitor_mode))
        self.spe = steps_per_epoch(self.train_loader, t.limit_train_batches, t.accumulate_grad_batches)
        self.early = early_stop(t, job.freeze, self.spe)
        if job.resume is not None:
            self.state = _restore(job.resume, model, job.optimizer, job.engine.scaler, self.ema, self.best, self.early)
            stale = self.ckpt_dir / "last.safetensors"
            if not t.save_checkpoints and self.main and stale.is_file():  # it would stay at the epoch resumed from
                stale.unlink()
                log.info("trainer.save_checkpoints=false: removed checkpoints/last.safetensors of the run resumed "
                         "(it would no longer be the last weights)")
        self.head_name = None
        if t.cache_features:
            from . import feature_cache

            in_run = set(job.freeze.trainable).union(*(ev.names for ev in job.freeze.events))
            self.head_name, (self.train_loader, self.val_loader) = feature_cache.prepare(
                model, in_run, job.freeze.bn_modes, (self.train_loader, self.val_loader), job.engine)
        self.head = model.get_submodule(self.head_name) if self.head_name is not None else None
        if self.head is not None:  # the head alone runs from here: it returns the logits (model.output was checked)
            job.engine.output = None
        self.fingerprint = checkpoint.flatten(job.cfg)
        self.loggers = make_loggers(job.cfg.logger, job.run_dir, self.state.history) if self.main else []
        for lg in self.loggers:
            lg.start(job.plan_text)

    def train_context(self) -> TrainContext:
        """The loop's context: the job's model and plan, the (cached) loaders, these callbacks."""
        job, t = self.job, self.t
        return TrainContext(
            job.model, job.optimizer, self.train_loader, self.val_loader, job.engine, t.epochs, job.freeze.events,
            job.freeze.bn_modes, task=job.task, schedule=job.schedule, limit_train_batches=t.limit_train_batches,
            limit_val_batches=t.limit_val_batches, forward_module=self.head, on_event=job.on_event,
            on_epoch=self.on_epoch, on_step=self.on_step if self.ema is not None else None,
            on_checkpoint=self.on_checkpoint, checkpoint_every_steps=t.checkpoint_every_steps,
            stop_requested=job.stop_requested, progress=bar_factory(t.progress and self.main, t.epochs),
            sync_every=t.sync_every_steps)

    def full_state(self) -> dict[str, Any]:
        """What checkpoints/last.pt holds (training/checkpoint.py): everything to go on bit for bit."""
        job, ema = self.job, self.ema
        scaler = job.engine.scaler
        rest = self.loop_state()
        return {"model": job.model.state_dict(), "optimizer": job.optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "ema": ema.state_dict() if ema is not None else None, **rest}

    def loop_state(self) -> dict[str, Any]:
        """The full state less the tensors of the model, optimizer, scaler and EMA: where the loop is (this
        process's RNG states included), the metrics, best, early stopping, events fired, the config."""
        job, state, early = self.job, self.state, self.early
        pos = state.position
        pos.rng = checkpoint.rng_state()
        return {"position": {k: getattr(pos, k) for k in Position.__dataclass_fields__},
                "history": state.history, "samples": state.samples, "seconds": state.seconds,
                "best": self.best.state(), "early": early.state() if early else None,
                "fired": [ev.where for ev in job.freeze.events
                          if ev.trigger.fired_by(pos.epoch, pos.step_in_epoch, pos.global_step)],
                "config": self.fingerprint}

    def save_last(self) -> None:
        """checkpoints/last.pt (rank 0), or under trainer.strategy=fsdp checkpoints/last.dcp: then a collective,
        every rank writes its shards (sharded_checkpoint.py), so every rank must call it."""
        if self.job.engine.sharded:
            if self.t.save_checkpoints:
                from . import sharded_checkpoint

                group = self.job.engine.group
                sharded_checkpoint.save(self.shared_ckpt_dir, self.job.model, self.job.optimizer,
                                        {"scaler": None, "ema": None, **self.loop_state()}, group.rank, group.world)
            return
        if self.t.save_checkpoints and self.main:
            checkpoint.save(self.ckpt_dir / checkpoint.LAST, self.full_state())
            stale = self.ckpt_dir / "last.dcp"
            if self.job.resume is not None and "dcp" in self.job.resume and stale.is_dir():
                import shutil  # a sharded run resumed without fsdp: last.pt is its state from now on

                shutil.rmtree(stale)
                log.info("Removed checkpoints/last.dcp of the sharded run resumed: checkpoints/last.pt holds its state")

    def on_checkpoint(self, state: TrainState) -> None:
        self.save_last()

    def on_step(self, step: int, opt: Any) -> None:
        self.ema.update_parameters(self.job.model)

    def on_epoch(self, row: dict[str, Any]) -> bool:
        """The epoch's EMA metrics, logs, best, early stopping and files; whether to stop early."""
        t, ema = self.t, self.ema
        if ema is not None:
            watched = ema.module.get_submodule(self.head_name) if self.head_name is not None else ema.module
            row.update({f"ema_val_{k}": v for k, v in evaluate(watched, self.val_loader, self.job.engine, self.job.task,
                                                                  t.limit_val_batches).items()})
        for name, loader in self.job.extra_loaders.items():  # the whole model, even where the head trains on cache
            row.update({f"{name}_{k}": v for k, v in evaluate(self.job.model, loader, self.job.engine, self.job.task,
                                                               t.limit_val_batches).items()})
        for lg in self.loggers:
            lg.epoch(row)
        # every rank keeps the same best and early-stopping counts (the numbers are all-reduced); rank 0 writes
        new_best = self.best.update(row)
        stop = self.early.should_stop(self.best, row) if self.early is not None else False
        weights = None
        if self.job.engine.sharded and (t.save_checkpoints or t.keep_epoch_checkpoints or new_best):
            weights = full_weights(self.job.model)  # on every rank (the same decision everywhere): a collective
        if self.main:
            self.write_epoch_weights(row, new_best, weights)
        self.save_last()  # after best and early stopping are updated: a resumed run continues their counts (every
        if self.main:     # rank calls it: under fsdp it is a collective; otherwise rank 0 alone writes last.pt)
            _log_epoch(row, t.epochs, self.best, tuple(f"{n}_" for n in self.job.extra_loaders))
        return stop

    def write_epoch_weights(self, row: dict[str, Any], new_best: bool,
                            weights: dict[str, torch.Tensor] | None = None) -> None:
        """checkpoints/: last, epoch_N (trainer.keep_epoch_checkpoints), ema and best .safetensors.
        `weights`: the model's gathered weights (trainer.strategy=fsdp), else its state_dict()."""
        t, ema, model, ckpt_dir = self.t, self.ema, self.job.model, self.ckpt_dir
        meta = {**(self.job.weights_meta or {}), "epoch": str(row["epoch"])}
        if t.save_checkpoints:
            files.save_weights(ckpt_dir / "last.safetensors", weights or model.state_dict(), meta)
        if t.keep_epoch_checkpoints:
            files.save_weights(ckpt_dir / f"epoch_{row['epoch']}.safetensors", weights or model.state_dict(), meta)
        if ema is not None:
            files.save_weights(ckpt_dir / "ema.safetensors", ema.module.state_dict(), meta)
        if new_best:
            watched = ema.module if t.monitor.startswith("ema_") else model
            files.save_weights(ckpt_dir / "best.safetensors", weights or watched.state_dict(),
                               {**meta, t.monitor: str(self.best.value)})

    def close(self) -> None:
        """However training ended: the loggers closed, curves.png drawn (rank 0)."""
        for lg in self.loggers:
            lg.close()
        if self.main:
            marks = [(ev.trigger.epoch_of(self.spe), ev.action) for ev in self.job.freeze.events]
            write_curves(self.job.run_dir / "curves.png", self.state.history, marks)


def early_stop(t: TrainerConfig, freeze: FreezePlan, spe: int) -> EarlyStop | None:
    """trainer.early_stopping, counting only once the freeze plan's last event has had its patience."""
    if t.early_stopping.patience is None:
        return None
    last_event = max((int(ev.trigger.epoch_of(spe)) for ev in freeze.events if ev.names), default=0)
    return EarlyStop(t.early_stopping.patience, t.early_stopping.min_delta,
                     last_event + t.early_stopping.patience - 1 if freeze.events else 0)


def write_final_weights(job: FitJob, best: Best, weights: dict[str, torch.Tensor] | None = None) -> None:
    """model.safetensors: the best epoch's weights (trainer.final_weights=best, where kept) or the last
    (`weights`: gathered from a sharded model, else the model's state_dict())."""
    run_dir, meta = job.run_dir, job.weights_meta or {}
    final = run_dir / "checkpoints" / "best.safetensors"
    if job.cfg.trainer.final_weights == FinalWeights.best and final.is_file():
        from safetensors.torch import load_file

        files.save_weights(run_dir / "model.safetensors", load_file(final),
                           {**meta, "source": job.source, "weights": f"best epoch {best.epoch}"})
    else:
        files.save_weights(run_dir / "model.safetensors", weights or job.model.state_dict(),
                           {**meta, "source": job.source, "weights": "last"})


def _load_states(saved: dict[str, Any], model: nn.Module, optimizer: Any) -> None:
    """The checkpoint's weights and optimizer state into this run's, or a UserError saying why they do not
    fit (another model or head size, other parameter groups) or cannot go on (NaN or inf in them)."""
    try:
        model.load_state_dict(saved["model"])
    except (RuntimeError, KeyError, TypeError) as e:
        first = "; ".join(line.strip() for line in str(e).strip().splitlines()[1:4]) or str(e)[:300]
        raise UserError(f"trainer.resume: the checkpoint's weights do not fit this model ({first[:400]}); it is not "
                        "a checkpoint of this run. Resume with the model it was written with, or start a fresh run.") from None
    try:
        optimizer.load_state_dict(saved["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
        raise UserError(f"trainer.resume: the checkpoint's optimizer state does not fit this run's parameter groups "
                        f"({str(e)[:300]}); it is not a checkpoint of this run (optim.groups, freeze or the optimizer "
                        "differ).") from None
    bad = [name for name, t in saved["model"].items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    bad += [f"optimizer state of parameter {i}" for i, state in optimizer.state_dict()["state"].items()
            for t in state.values() if isinstance(t, torch.Tensor) and t.is_floating_point()
            and not bool(torch.isfinite(t).all())]
    if bad:
        raise UserError(f"trainer.resume: the checkpoint holds NaN or inf in {len(bad)} tensor(s) ({', '.join(bad[:4])}"
                        f"{' ...' if len(bad) > 4 else ''}), so training cannot go on from it (that is not the "
                        "learning rate: the saved state itself is broken). Resume from an earlier checkpoint, or "
                        "start a fresh run.")


def _restore(saved: dict[str, Any], model: nn.Module, optimizer: Any, scaler: Any, ema: Any, best: Best,
             early: EarlyStop | None) -> TrainState:
    if "dcp" in saved:  # trainer.strategy=fsdp: checkpoints/last.dcp, every rank reads its shards
        from .sharded_checkpoint import load_states

        load_states(saved["dcp"], model, optimizer, saved["param_groups"])
    else:
        _load_states(saved, model, optimizer)
    if scaler is not None and saved.get("scaler") is not None:
        scaler.load_state_dict(saved["scaler"])
    if ema is not None and saved.get("ema") is not None:
        ema.load_state_dict(saved["ema"])
    best.value, best.epoch = saved["best"]["value"], saved["best"]["epoch"]
    if early is not None and saved.get("early"):
        early.best, early.stale = saved["early"]["best"], saved["early"]["stale"]
    pos = Position(**saved["position"])
    log.info("Resuming at epoch %d, after %d batch(es) of it (global step %d); %d epoch(s) of metrics restored",
             pos.epoch + 1, pos.step_in_epoch, pos.global_step, len(saved["history"]))
    return TrainState(history=list(saved["history"]), samples=saved["samples"], seconds=saved["seconds"],
                      position=pos)


def _log_epoch(row: dict[str, Any], epochs: int, best: Best, extra: tuple[str, ...] = ()) -> None:
    star = "  *best" if best.epoch == row["epoch"] else ""
    shown = "  ".join(f"{k} {row[k]:.4f}" for k in row if k.startswith(("train_", "val_", "ema_val_", *extra)))
    log.info("epoch %d/%d  %s  trainable %s  %.0f samples/s%s", row["epoch"] + 1, epochs, shown,
             f"{row['trainable_params']:,}", row["samples_per_s"], star)
