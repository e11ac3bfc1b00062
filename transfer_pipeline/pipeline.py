"""The recipe: config -> source -> build -> plan -> load -> report -> freeze -> groups -> train -> outputs.

`run(cfg, run_dir)` does the steps its mode lists in `STEPS`, top to bottom, each a plain
function of one `Run` (the config, the run folder and what the steps before it made). Takes
plain dataclasses (no Hydra), so tests and other programs can call it directly.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import ConfigOrigins, UserError
from .names import printable_text
from .schema import Mode, RunConfig

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


class Interrupted(BaseException):
    """SIGTERM (or SIGINT) during a run: recorded as `interrupted`, then the process exits non-zero."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run(cfg: RunConfig, run_dir: Path, origins: ConfigOrigins | None = None) -> dict[str, Any]:
    """Do what `cfg.mode` says; returns the summary (also written to summary.json)."""
    return run_job(lambda: cfg, run_dir, origins)


def run_job(load_config: Callable[[], RunConfig], run_dir: Path, origins: ConfigOrigins | None = None) -> dict[str, Any]:
    """Claim the run folder, then check the config (`load_config`) and run its mode's steps.

    However the run ends, summary.json says how: it is written as `running` (pid, start time)
    before anything else, then `completed` / `planned` / ... , `failed` (a UserError or any other
    exception: its type and message) or `interrupted` (Ctrl-C, SIGTERM); run.log gets the same
    last line. A UserError is re-raised with its message (plus, with `origins`, where a
    digits-specific value came from); other exceptions keep their traceback.
    """
    from .training.outputs import git_commit, versions, write_json
    from .training.run_folder import claim, release

    run_dir = Path(run_dir)
    claim(run_dir)  # before anything is written: a folder in use or holding a run is refused untouched
    summary: dict[str, Any] = {"status": "running", "mode": None, "pid": os.getpid(), "started_at": _now()}
    started = time.perf_counter()
    try:
        write_json(run_dir / "summary.json", summary)
        with _signals_interrupt(), _warnings_once():
            cfg = load_config()  # the schema's checks: a bad value ends here, recorded as failed
            summary["mode"] = cfg.mode.value
            state = Run(cfg, run_dir, summary)
            for step in STEPS[cfg.mode]:
                step(state)
    except UserError as e:
        message = str(e) + (origins.hint(str(e)) if origins else "")
        summary.update(status="failed", error_type="UserError", error=message)
        log.error("error: %s", printable_text(message))
        if message != str(e):
            raise UserError(message) from None
        raise
    except (KeyboardInterrupt, Interrupted) as e:
        summary.update(status="interrupted", error=f"interrupted by {e if isinstance(e, Interrupted) else 'SIGINT'}")
        raise
    except BaseException as e:
        summary.update(status="failed", error_type=type(e).__name__, error=str(e))
        log.exception("The run failed with an unexpected %s (a bug: please report it with this traceback)",
                      type(e).__name__)
        raise
    finally:
        summary["seconds"] = round(time.perf_counter() - started, 3)
        summary["ended_at"] = _now()
        summary["versions"] = versions()
        summary["git_commit"] = git_commit(Path(__file__).resolve().parent)
        try:
            write_json(run_dir / "summary.json", summary)
        finally:
            release(run_dir)
        log.log(logging.INFO if summary["status"] != "failed" else logging.ERROR, "Run %s after %.1f s: %s",
                summary["status"], summary["seconds"], run_dir)
    return summary


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


class _OncePerMessage(logging.Filter):
    """Lets each warning text through once, wherever it is raised (warnings' own "once" does not survive
    the `catch_warnings` blocks libraries use inside)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        first = record.getMessage().split("\n", 1)[0]
        key = first.split(": ", 1)[-1]  # 'path:line: FutureWarning: text' -> 'FutureWarning: text'
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


@contextmanager
def _warnings_once() -> Iterator[None]:
    """Warnings (third-party deprecations ...) go to the log (so run.log has them), each text once a run."""
    logger = logging.getLogger("py.warnings")
    once = _OncePerMessage()

    def to_log(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        logger.warning("%s", warnings.formatwarning(message, category, filename, lineno, line).rstrip())

    logger.addFilter(once)
    try:
        with warnings.catch_warnings():  # restores the filters and showwarning afterwards
            warnings.simplefilter("always")  # every occurrence reaches the filter, which keeps the first
            warnings.showwarning = to_log
            yield
    finally:
        logger.removeFilter(once)


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM raises Interrupted in the main thread (as Ctrl-C raises KeyboardInterrupt), so it is recorded."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- the steps ---------------------------------------------------------------------------------------

def setup(r: Run) -> None:
    """Everything that can be checked without the model or the data, before anything heavy."""
    from .training.loop import autocast_context, resolve_device

    r.device = resolve_device(r.cfg.device)
    autocast_context(r.cfg.trainer.precision, r.device)
    seed_everything(r.cfg.seed)
    r.summary["device"] = str(r.device)


def plan(r: Run) -> None:
    """Build the target (on the meta device when weights will be assigned), read the source, plan, report."""
    from .api import plan_report
    from .build import build_model
    from .sources.read import read_source
    from .training import outputs

    cfg = r.cfg
    on_meta = cfg.source.meta_init and (cfg.source.path is not None or cfg.source.weights is not None)
    r.model = build_model(cfg.model, meta=on_meta)
    r.report, r.weights = plan_report(r.model, read_source(cfg.source), cfg.mapping, cfg.source)
    log.info(printable_text(r.report.table()))  # names come from the file: no terminal escapes
    outputs.write_json(r.run_dir / "load_report.json", r.report.to_dict())
    r.summary.update(source=r.report.source, loaded_fraction=r.report.loaded_fraction,
                     loaded_tensors=len(r.report.loaded), missing_tensors=len(r.report.missing))
    if r.weights is not None and r.weights.all_files:
        r.summary["source_sha256"] = outputs.sha256_files(r.weights.all_files)  # every shard counts
    r.report.check(cfg.mapping.expect)  # after the plan is shown and written: the person sees why


def load(r: Run) -> None:
    """Put the planned tensors into the model (assign from the memory map, or copy), on the device."""
    from .build import build_model
    from .mapping.apply import load_model

    def build_normally():  # load_model's fallback: full random init, seeded as a first build would be
        seed_everything(r.cfg.seed)
        return build_model(r.cfg.model)

    r.model = load_model(r.model, r.report.plan, r.weights, r.device, build_normally,
                         r.cfg.source.allow_nonfinite, r.cfg.source.allow_lossy_cast)


def export(r: Run) -> None:
    from .training import outputs

    path = r.run_dir / "model.safetensors"
    outputs.save_weights(path, r.model.state_dict(), {"source": str(r.summary["source"])})
    r.summary["status"] = "exported"
    log.info("Exported %s weights to %s", r.report.target_name, path)


def tune(r: Run) -> None:
    """Freezing (requires_grad, BN policy, events) and the parameter groups with their first LRs."""
    from .tuning.batchnorm import apply_bn_policy, format_bn_plan
    from .tuning.freezing import plan_freezing, set_requires_grad
    from .tuning.lr_schedule import initial_lrs
    from .tuning.param_groups import build_groups, format_groups, group_rows, no_decay_names

    cfg, model = r.cfg, r.model
    r.freeze = plan_freezing(model, cfg.freeze, max(cfg.trainer.epochs, 1))
    set_requires_grad(model, r.freeze.trainable)
    r.groups = build_groups(r.freeze.names, cfg.optim, r.freeze.events, r.freeze.blocks, no_decay_names(model, cfg.optim))
    lrs = initial_lrs(r.groups, r.freeze.trainable, r.freeze.events, cfg.optim.scheduler)
    params = dict(model.named_parameters())
    r.summary.update(trainable_params=sum(params[n].numel() for n in r.freeze.trainable),
                     frozen_params=sum(p.numel() for n, p in params.items() if n not in r.freeze.trainable))
    model.train()
    apply_bn_policy(model, r.freeze.bn_modes)
    r.summary["param_groups"] = group_rows(model, r.groups, lrs, r.freeze.bn_modes)
    log.info("Parameter groups (before epoch 0):\n%s", format_groups(model, r.groups, lrs, r.freeze.bn_modes))
    log.info(format_bn_plan(model, r.freeze.bn_modes, cfg.freeze.bn.value))


def planned(r: Run) -> None:
    r.summary["status"] = "planned"


def data(r: Run) -> None:
    from .training.data import build_data, loaders
    from .training.loop import check_output_size

    cfg = r.cfg
    r.data = build_data(cfg.data, cfg.seed)
    r.loaders = loaders(r.data, cfg.trainer.batch_size, cfg.seed, cfg.data.num_workers,
                        pin_memory=r.device.type == "cuda")
    check_output_size(r.model, r.loaders[1], r.data.num_classes, r.device)
    r.summary.update(num_classes=r.data.num_classes, train_samples=len(r.data.train), val_samples=len(r.data.val))


def evaluate(r: Run) -> None:
    from .training.loop import autocast_context, evaluate as evaluate_loader

    cfg = r.cfg
    val_loss, val_acc = evaluate_loader(r.model, r.loaders[1], r.device, autocast_context(cfg.trainer.precision, r.device),
                                        cfg.trainer.limit_val_batches)
    r.summary.update(status="evaluated", val_loss=val_loss, val_acc=val_acc)
    log.info("val_loss %.4f  val_acc %.4f", val_loss, val_acc)


def fit(r: Run) -> None:
    """Train every epoch: events, per-step LRs, metrics.csv and checkpoints after each epoch, final weights."""
    from .training import outputs
    from .training.loop import steps_per_epoch, train
    from .tuning.lr_schedule import build_schedule, write_lrs
    from .tuning.param_groups import current_lrs, format_groups, make_optimizer

    cfg, model, run_dir = r.cfg, r.model, r.run_dir
    model.to(r.device)
    r.optimizer = make_optimizer(model, r.groups, cfg.optim)
    train_loader, val_loader = r.loaders
    schedule = build_schedule(r.groups, r.freeze.trainable, r.freeze.events, cfg.optim.scheduler, cfg.trainer.epochs,
                              steps_per_epoch(train_loader, cfg.trainer.limit_train_batches))
    write_lrs(r.optimizer, schedule.lrs(0))
    history: list[dict[str, Any]] = []

    def on_event(evs) -> None:
        log.info("%s\n%s", "\n".join(ev.describe() for ev in evs),
                 format_groups(model, r.groups, current_lrs(r.optimizer), r.freeze.bn_modes))

    def on_epoch(row: dict[str, Any]) -> None:
        history.append(row)
        outputs.write_csv(run_dir / "metrics.csv", history)
        if cfg.trainer.save_checkpoints:
            outputs.save_weights(run_dir / "checkpoints" / "last.safetensors", model.state_dict(),
                                 {"epoch": str(row["epoch"])})
        if cfg.trainer.keep_epoch_checkpoints:
            outputs.save_weights(run_dir / "checkpoints" / f"epoch_{row['epoch']}.safetensors", model.state_dict(),
                                 {"epoch": str(row["epoch"])})
        log.info("epoch %d/%d  train_loss %.4f  train_acc %.3f  val_loss %.4f  val_acc %.3f  trainable %s  %.0f samples/s",
                 row["epoch"], cfg.trainer.epochs - 1, row["train_loss"], row["train_acc"], row["val_loss"],
                 row["val_acc"], f"{row['trainable_params']:,}", row["samples_per_s"])

    state = train(model, r.optimizer, train_loader, val_loader, epochs=cfg.trainer.epochs, events=r.freeze.events,
                  bn_policy=r.freeze.bn_modes, device=r.device, precision=cfg.trainer.precision,
                  grad_clip=cfg.trainer.grad_clip, limit_train_batches=cfg.trainer.limit_train_batches,
                  limit_val_batches=cfg.trainer.limit_val_batches, schedule=schedule, on_event=on_event,
                  on_epoch=on_epoch)
    outputs.save_weights(run_dir / "model.safetensors", model.state_dict(), {"source": str(r.summary["source"])})
    last = state.history[-1]
    r.summary.update(status="completed", epochs=cfg.trainer.epochs, val_acc=last["val_acc"], val_loss=last["val_loss"],
                     train_samples_per_s=state.samples / state.seconds if state.seconds else None,
                     final_trainable_params=last["trainable_params"])
    log.info("Done: val_acc %.4f, weights in %s", last["val_acc"], run_dir / "model.safetensors")


# Each mode's steps, in order: a plan reads no tensor data (freezing and groups need names only).
STEPS: dict[Mode, tuple[Callable[[Run], None], ...]] = {
    Mode.plan: (setup, plan, tune, planned),
    Mode.export: (setup, plan, load, export),
    Mode.eval: (setup, plan, load, tune, data, evaluate),
    Mode.train: (setup, plan, load, tune, data, fit),
}
