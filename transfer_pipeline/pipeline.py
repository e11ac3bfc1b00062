"""The recipe: config -> source -> build -> plan -> load -> report -> freeze -> groups -> train -> outputs.

`run(cfg, run_dir)` does the steps its mode lists in `STEPS`, top to bottom, each a plain
function of one `Run` (the config, the run folder and what the steps before it made). Takes
plain dataclasses (no Hydra), so tests and other programs can call it directly.
"""

from __future__ import annotations

import logging
import os
import random
import shlex
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


def make_deterministic() -> None:
    """`trainer.deterministic`: the same config gives bitwise the same weights (on CPU; on CUDA as far
    as torch's deterministic algorithms go, which raise where an op has none)."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic matmuls
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


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
    resume_state: Any = None  # a full-state checkpoint to continue from (trainer.resume)
    signals: Any = None  # StopSignals: whether a Ctrl-C / SIGTERM asked the loop to stop


class Interrupted(BaseException):
    """SIGTERM (or SIGINT) during a run: recorded as `interrupted`, then the process exits non-zero."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run(cfg: RunConfig, run_dir: Path, origins: ConfigOrigins | None = None) -> dict[str, Any]:
    """Do what `cfg.mode` says; returns the summary (also written to summary.json)."""
    return run_job(lambda: cfg, run_dir, origins, resume=cfg.trainer.resume is not None)


def run_job(load_config: Callable[[], RunConfig], run_dir: Path, origins: ConfigOrigins | None = None,
            resume: bool = False) -> dict[str, Any]:
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
    claim(run_dir, resume)  # before anything is written: a folder in use or holding a run is refused untouched
    summary: dict[str, Any] = {"status": "running", "mode": None, "pid": os.getpid(), "started_at": _now()}
    started = time.perf_counter()
    signals = StopSignals(origins)
    with signals.installed():  # until summary.json has the ending: a late Ctrl-C cannot cut the record short
        try:
            write_json(run_dir / "summary.json", summary)
            with _warnings_once():
                cfg = load_config()  # the schema's checks: a bad value ends here, recorded as failed
                summary["mode"] = cfg.mode.value
                state = Run(cfg, run_dir, summary, signals=signals)
                for step in STEPS[cfg.mode]:
                    step(state)
        except UserError as e:
            signals.closing = True
            message = str(e) + (origins.hint(str(e)) if origins else "")
            summary.update(status="failed", error_type="UserError", error=message)
            log.error("error: %s", printable_text(message))
            if message != str(e):
                raise UserError(message) from None
            raise
        except (KeyboardInterrupt, Interrupted) as e:
            signals.closing = True
            summary.update(status="interrupted", error=f"interrupted by {e if isinstance(e, Interrupted) else 'SIGINT'}")
            log.warning("Interrupted (%s)%s", e if isinstance(e, Interrupted) else "SIGINT",
                        f"; resume with: {summary['resume_command']}" if "resume_command" in summary else "")
            raise
        except BaseException as e:
            signals.closing = True
            summary.update(status="failed", error_type=type(e).__name__, error=str(e))
            log.exception("The run failed with an unexpected %s (a bug: please report it with this traceback)",
                          type(e).__name__)
            raise
        finally:
            signals.closing = True
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


class StopSignals:
    """Ctrl-C and SIGTERM during a run. While the loop trains (`graceful`), the first one asks it to
    finish the step and save (the loop polls `requested`); a second one, or one at any other time,
    raises Interrupted at once (files are written atomically, so none is left half-written)."""

    def __init__(self, origins: ConfigOrigins | None = None) -> None:
        self.graceful = False
        self.closing = False  # the run is writing its ending: further signals wait for it
        self.signum: int | None = None
        self.origins = origins

    def requested(self) -> bool:
        return self.signum is not None

    def handle(self, signum: int, frame: Any) -> None:
        if self.closing:
            return
        if self.graceful and self.signum is None:
            self.signum = signum
            log.warning("%s: finishing this step and saving checkpoints/last.pt (press Ctrl-C again to stop at once)",
                        signal.Signals(signum).name)
            return
        raise Interrupted(signum)

    def resume_command(self, run_dir: Path) -> str:
        keep = [o for o in (self.origins.overrides if self.origins else ())
                if not o.lstrip("+~").startswith(("trainer.resume", "hydra.run.dir"))]
        shown = " ".join(shlex.quote(o) for o in keep) if self.origins else "<the same overrides>"
        return f"python run.py {shown} trainer.resume=auto hydra.run.dir={shlex.quote(str(run_dir))}".replace("  ", " ")

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


# --- the steps ---------------------------------------------------------------------------------------

def setup(r: Run) -> None:
    """Everything that can be checked without the model or the data, before anything heavy."""
    from .training.loop import autocast_context, resolve_device

    r.device = resolve_device(r.cfg.device)
    autocast_context(r.cfg.trainer.precision, r.device)
    if r.cfg.trainer.deterministic:
        make_deterministic()
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


def resume(r: Run) -> None:
    """`trainer.resume`: read the full-state checkpoint and check that it belongs to this config."""
    from .paths import resolve_path
    from .training import checkpoint

    spec = r.cfg.trainer.resume
    if spec is None:
        return
    path = (r.run_dir / "checkpoints" / checkpoint.LAST) if spec == "auto" else resolve_path(spec, "trainer.resume")
    saved = checkpoint.load(path)
    diff = checkpoint.config_differences(saved["config"], checkpoint.flatten(r.cfg))
    if diff:
        shown = "\n".join(f"  {d}" for d in diff[:12]) + (f"\n  (+{len(diff) - 12} more)" if len(diff) > 12 else "")
        raise UserError(f"trainer.resume: {path} was written with another config; resuming would not continue the "
                        f"same run. Differences (checkpoint -> now):\n{shown}\nRun with the checkpoint's config "
                        "(its .hydra/overrides.yaml), or start a fresh run.")
    if saved["position"]["epoch"] >= r.cfg.trainer.epochs:
        raise UserError(f"trainer.resume: {path} is from a run that finished all {r.cfg.trainer.epochs} epochs; "
                        "there is nothing to resume. Start a fresh run (a new hydra.run.dir).")
    r.resume_state = saved
    log.info("trainer.resume: continuing from %s", path)


def fit(r: Run) -> None:
    """Train every epoch (training/fit.py: checkpoints, best, EMA, early stopping, loggers, curves)."""
    from .training.fit import fit as fit_loop
    from .training.loop import steps_per_epoch
    from .tuning.lr_schedule import build_schedule, write_lrs
    from .tuning.param_groups import current_lrs, format_groups, make_optimizer

    cfg, model = r.cfg, r.model
    model.to(r.device)
    r.optimizer = make_optimizer(model, r.groups, cfg.optim)
    schedule = build_schedule(r.groups, r.freeze.trainable, r.freeze.events, cfg.optim.scheduler, cfg.trainer.epochs,
                              steps_per_epoch(r.loaders[0], cfg.trainer.limit_train_batches))
    write_lrs(r.optimizer, schedule.lrs(0))

    def on_event(evs) -> None:
        log.info("%s\n%s", "\n".join(ev.describe() for ev in evs),
                 format_groups(model, r.groups, current_lrs(r.optimizer), r.freeze.bn_modes))

    r.signals.graceful = True  # from here a first Ctrl-C / SIGTERM finishes the step and saves
    try:
        result = fit_loop(cfg, r.run_dir, model, r.optimizer, r.groups, r.freeze, r.loaders, r.device, schedule,
                          r.resume_state, r.signals.requested, on_event, r.report.table(), str(r.summary["source"]))
    finally:
        r.signals.graceful = False
    state, best = result.state, result.best
    r.summary.update(epochs=len(state.history), train_samples_per_s=state.samples / state.seconds if state.seconds else None,
                     monitor=best.metric, best_epoch=best.epoch, **{f"best_{best.metric}": best.value},
                     stopped_early=state.stopped_early)
    if state.history:
        last = state.history[-1]
        r.summary.update(val_acc=last["val_acc"], val_loss=last["val_loss"],
                         final_trainable_params=last["trainable_params"])
    if result.interrupted:
        command = r.signals.resume_command(r.run_dir)
        r.summary["resume_command"] = command
        log.warning("Stopped after epoch %d, batch %d: checkpoints/last.pt holds the state. Resume with:\n  %s",
                    state.position.epoch + 1, state.position.step_in_epoch, command)
        raise Interrupted(r.signals.signum or signal.SIGINT)
    r.summary["status"] = "completed"
    log.info("Done: val_acc %.4f (best %s %.4f at epoch %s), weights (%s) in %s", r.summary["val_acc"], best.metric,
             best.value if best.value is not None else float("nan"), (best.epoch or 0) + 1,
             cfg.trainer.final_weights.value, r.run_dir / "model.safetensors")


# Each mode's steps, in order: a plan reads no tensor data (freezing and groups need names only).
STEPS: dict[Mode, tuple[Callable[[Run], None], ...]] = {
    Mode.plan: (setup, plan, tune, planned),
    Mode.export: (setup, plan, load, export),
    Mode.eval: (setup, plan, load, tune, data, evaluate),
    Mode.train: (setup, resume, plan, load, tune, data, fit),
}
