"""The `fit` step: the training loop with everything around it that keeps a run's work.

Per epoch: metrics.csv (and TensorBoard), checkpoints/last.safetensors (weights) and
checkpoints/last.pt (the full state, training/checkpoint.py), checkpoints/best.safetensors at a
new best of `trainer.monitor`, the EMA's weights, early stopping. A stop request (Ctrl-C,
SIGTERM) finishes the step, writes last.pt with the position inside the epoch, and ends the run
as interrupted with the command that resumes it. curves.png is drawn however the run ends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

from ..schema import FinalWeights, RunConfig
from . import checkpoint
from .. import files
from .curves import write_curves
from .engine import Engine
from .evaluate import evaluate
from .loggers import make_loggers
from .loop import Position, StopTraining, TrainState, steps_per_epoch, train
from .monitor import Best, EarlyStop, make_ema, monitor_mode
from .progress import bar_factory

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    state: TrainState
    best: Best
    interrupted: bool = False
    cached: str | None = None  # the head trained on cached features (trainer.cache_features)
    notes: list[str] = field(default_factory=list)


def fit(cfg: RunConfig, run_dir: Path, model: nn.Module, optimizer: Any, groups: list, freeze: Any,
        loaders: tuple, engine: Engine, task: Any, schedule: Any, resume: dict[str, Any] | None,
        stop_requested: Callable[[], bool], on_event: Callable, plan_text: str, source: str,
        weights_meta: dict[str, str] | None = None) -> FitResult:
    """`task`: task.TaskMetrics (loss, metrics); `weights_meta`: extra metadata of the weights files (class names)."""
    t = cfg.trainer
    train_loader, val_loader = loaders
    ckpt_dir = run_dir / "checkpoints"
    state = TrainState()
    scaler = engine.scaler
    main = engine.is_main  # under torchrun only rank 0 writes files
    ema = make_ema(model, t.ema.decay) if t.ema.decay is not None else None
    best = Best(t.monitor, monitor_mode(t.monitor, t.monitor_mode))
    early = None
    spe = steps_per_epoch(train_loader, t.limit_train_batches, t.accumulate_grad_batches)
    if t.early_stopping.patience is not None:
        last_event = max((int(ev.trigger.epoch_of(spe)) for ev in freeze.events if ev.names), default=0)
        early = EarlyStop(t.early_stopping.patience, t.early_stopping.min_delta,
                          last_event + t.early_stopping.patience - 1 if freeze.events else 0)
    if resume is not None:
        state = _restore(resume, model, optimizer, scaler, ema, best, early)
    head_name = None
    if t.cache_features:
        from . import feature_cache

        in_run = set(freeze.trainable).union(*(ev.names for ev in freeze.events))
        head_name, (train_loader, val_loader) = feature_cache.prepare(model, in_run, freeze.bn_modes,
                                                                      (train_loader, val_loader), engine)
    head = model.get_submodule(head_name) if head_name is not None else None
    if head is not None:
        engine.output = None  # the head alone runs from here: what it returns are the logits (model.output was checked)
    fingerprint = checkpoint.flatten(cfg)
    loggers = make_loggers(cfg.logger, run_dir, state.history) if main else []
    for lg in loggers:
        lg.start(plan_text)

    def full_state() -> dict[str, Any]:
        pos = state.position
        pos.rng = checkpoint.rng_state()
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "ema": ema.state_dict() if ema is not None else None,
                "position": {k: getattr(pos, k) for k in Position.__dataclass_fields__},
                "history": state.history, "samples": state.samples, "seconds": state.seconds,
                "best": best.state(), "early": early.state() if early else None,
                "fired": [ev.where for ev in freeze.events
                          if ev.trigger.fired_by(pos.epoch, pos.step_in_epoch, pos.global_step)],
                "config": fingerprint}

    def save_last() -> None:
        if t.save_checkpoints and main:
            checkpoint.save(ckpt_dir / checkpoint.LAST, full_state())

    def on_step(step: int, opt: Any) -> None:
        if ema is not None:
            ema.update_parameters(model)

    def on_epoch(row: dict[str, Any]) -> bool:
        if ema is not None:
            watched = ema.module.get_submodule(head_name) if head_name is not None else ema.module
            row.update({f"ema_val_{k}": v for k, v in evaluate(watched, val_loader, engine, task,
                                                                  t.limit_val_batches).items()})
        for lg in loggers:
            lg.epoch(row)
        # every rank keeps the same best and early-stopping counts (the numbers are all-reduced); rank 0 writes
        new_best = best.update(row)
        stop = early.should_stop(best, row) if early is not None else False
        if main:
            meta = {**(weights_meta or {}), "epoch": str(row["epoch"])}
            if t.save_checkpoints:
                files.save_weights(ckpt_dir / "last.safetensors", model.state_dict(), meta)
            if t.keep_epoch_checkpoints:
                files.save_weights(ckpt_dir / f"epoch_{row['epoch']}.safetensors", model.state_dict(), meta)
            if ema is not None:
                files.save_weights(ckpt_dir / "ema.safetensors", ema.module.state_dict(), meta)
            if new_best:
                watched = ema.module if t.monitor.startswith("ema_") else model
                files.save_weights(ckpt_dir / "best.safetensors", watched.state_dict(),
                                     {**meta, t.monitor: str(best.value)})
            save_last()  # after best and early stopping are updated: a resumed run continues their counts
            _log_epoch(row, cfg.trainer.epochs, best)
        return stop

    result = FitResult(state, best, cached=head_name)
    try:
        train(model, optimizer, train_loader, val_loader, epochs=t.epochs, events=freeze.events,
              bn_policy=freeze.bn_modes, engine=engine, task=task,
              limit_train_batches=t.limit_train_batches, limit_val_batches=t.limit_val_batches, schedule=schedule,
              on_event=on_event, on_epoch=on_epoch, on_step=on_step if ema is not None else None, state=state,
              on_checkpoint=lambda s: save_last(), checkpoint_every_steps=t.checkpoint_every_steps,
              stop_requested=stop_requested, progress=bar_factory(t.progress and main, t.epochs),
              sync_every=t.sync_every_steps, forward_module=head)
    except StopTraining:
        result.interrupted = True
    finally:
        for lg in loggers:
            lg.close()
        if main:
            marks = [(ev.trigger.epoch_of(spe), ev.action) for ev in freeze.events]
            write_curves(run_dir / "curves.png", state.history, marks)
    if not result.interrupted and main:
        final = ckpt_dir / "best.safetensors"
        if t.final_weights == FinalWeights.best and final.is_file():
            from safetensors.torch import load_file

            files.save_weights(run_dir / "model.safetensors", load_file(final),
                                 {**(weights_meta or {}), "source": source, "weights": f"best epoch {best.epoch}"})
        else:
            files.save_weights(run_dir / "model.safetensors", model.state_dict(),
                                 {**(weights_meta or {}), "source": source, "weights": "last"})
    return result


def _restore(saved: dict[str, Any], model: nn.Module, optimizer: Any, scaler: Any, ema: Any, best: Best,
             early: EarlyStop | None) -> TrainState:
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
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


def _log_epoch(row: dict[str, Any], epochs: int, best: Best) -> None:
    star = "  *best" if best.epoch == row["epoch"] else ""
    shown = "  ".join(f"{k} {row[k]:.4f}" for k in row if k.startswith(("train_", "val_", "ema_val_")))
    log.info("epoch %d/%d  %s  trainable %s  %.0f samples/s%s", row["epoch"] + 1, epochs, shown,
             f"{row['trainable_params']:,}", row["samples_per_s"], star)
