"""A run's life: claim the folder, record `running`, run the mode's steps, record how it ended.

`run_job` is what `python run.py` calls (`run` is the same for plain dataclasses). However
a run ends, summary.json and the last line of run.log say how; Ctrl-C and SIGTERM are
`StopSignals` (a first one during training finishes the step and saves, a second stops at once);
`trainer.max_minutes` is a first SIGTERM of its own, sent by a timer, and a hard stop 60 s later
(`TimeLimit`): a job that hangs does not hold up a sweep. Warnings are logged once each.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import ConfigOrigins, Interrupted, UserError
from .folder import has_last
from .signals import HARD_STOP_AFTER_S, StopSignals, TimeLimit
from ..names import printable_text
from ..schema import RunConfig

log = logging.getLogger(__name__)


def run(cfg: RunConfig, run_dir: Path, origins: ConfigOrigins | None = None) -> dict[str, Any]:
    """Do what `cfg.mode` says with plain dataclasses (no Hydra): tests and other programs call this.
    Returns the summary (also written to summary.json)."""
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
    from ..files import write_json
    from .folder import claim, reserve_space
    from .recipe import STEPS
    from .state import Run

    run_dir = Path(run_dir)
    try:
        claim(run_dir, resume)  # before anything is written: a folder in use or holding a run is refused untouched
    except UserError as e:  # nothing is written (summary.json, run.log may be another run's): said here only
        log.error("error: %s", e)
        raise
    summary: dict[str, Any] = {"status": "running", "mode": None, "pid": os.getpid(), "started_at": _now()}
    started = time.perf_counter()
    signals = StopSignals(origins)
    state = None
    with signals.installed():  # until summary.json has the ending: a late Ctrl-C cannot cut the record short
        try:
            _record_config(run_dir, origins, summary)
            reserve_space(run_dir)
            write_json(run_dir / "summary.json", summary)
            with _warnings_once():
                cfg = load_config()  # the schema's checks: a bad value ends here, recorded as failed
                signals.start_limit(cfg.trainer.max_minutes, started)
                summary["mode"] = cfg.mode.value
                state = Run(cfg, run_dir, summary, signals=signals)
                for step in STEPS[cfg.mode]:
                    step(state)
                _record_hash(state, summary, wait=True)
                if origins is not None and origins.rerun_of:
                    _compare_source(summary, Path(origins.rerun_of))
        except UserError as e:
            signals.closing = True
            message = str(e) + (origins.hint(str(e)) if origins else "")
            summary.update(status="failed", error_type="UserError", error=message)
            log.error("error: %s", printable_text(message))
            if message != str(e):
                raise UserError(message) from None
            raise
        except TimeLimit as e:  # ended hard, or reached outside training (where a first SIGTERM stops at once)
            signals.closing = True
            _limit_ending(e, signals, run_dir, summary)
            raise
        except (KeyboardInterrupt, Interrupted) as e:
            signals.closing = True
            if signals.limit_reached and getattr(e, "signum", None) == signal.SIGALRM:  # the loop stopped for the limit
                limit = TimeLimit(signals.limit or 0.0, hard=False)
                _limit_ending(limit, signals, run_dir, summary)
                raise limit from None
            summary.update(status="interrupted", error=f"interrupted by {e if isinstance(e, Interrupted) else 'SIGINT'}")
            log.warning("Interrupted (%s)%s", e if isinstance(e, Interrupted) else "SIGINT",
                        f"; resume with: {summary['resume_command']}" if "resume_command" in summary else "")
            raise
        except BaseException as e:
            signals.closing = True
            if _disk_full(e):  # not a bug: the person's disk; said as plainly as any other UserError
                raise _disk_full_error(e, run_dir, summary) from None
            summary.update(status="failed", error_type=type(e).__name__, error=str(e))
            log.exception("The run failed with an unexpected %s (a bug: please report it with this traceback)",
                          type(e).__name__)
            raise
        finally:
            signals.closing = True
            _close(run_dir, summary, state, origins, time.perf_counter() - started)
    return summary


LAST = "checkpoints/last.pt (last.dcp/ under trainer.strategy=fsdp)"


def _limit_ending(e: TimeLimit, signals: StopSignals, run_dir: Path, summary: dict[str, Any]) -> None:
    """How a run ended by trainer.max_minutes is recorded: `interrupted` (stopped as a first SIGTERM stops it,
    resumable) or `failed` (it did not stop by itself and was ended hard); both with the resume command."""
    command = summary.get("resume_command")
    if command is None and has_last(run_dir):
        command = summary["resume_command"] = signals.resume_command(run_dir)
    if e.hard:
        message = (f"{e}, and the run did not stop by itself within {HARD_STOP_AFTER_S} s (stuck inside a step or a "
                   "data loader?): it was ended hard")
    else:
        message = f"{e}, so the run stopped (as on SIGTERM)"
    message += (f". {LAST} holds its last saved state; resume with: {command}" if command else
                ". There is no checkpoint to resume from.")
    summary.update(status="failed" if e.hard else "interrupted", error_type="TimeLimit", error=message)
    log.log(logging.ERROR if e.hard else logging.WARNING, "%s", message)


def _disk_full_error(e: BaseException, run_dir: Path, summary: dict[str, Any]) -> UserError:
    """The ending of a run whose disk filled up: recorded as such, said once, without a traceback."""
    message = (f"disk full: {getattr(e, 'strerror', None) or e} while writing "
               f"{getattr(e, 'filename', None) or 'a file of the run'}. Free space on the disk that holds "
               f"{run_dir.resolve()} (df -h shows it), or give the run a folder on another disk, and run again"
               + (f"; {LAST} lets it resume (trainer.resume=auto)." if has_last(run_dir) else "."))
    summary.update(status="failed", error_type="DiskFull", error=message)
    logging.raiseExceptions = False  # run.log is on that disk: its handler fails quietly, stderr still says it
    log.error("error: %s", message)
    return UserError(message)


def _close(run_dir: Path, summary: dict[str, Any], state: Any, origins: ConfigOrigins | None, seconds: float) -> None:
    """However the run ended: the last summary.json (hash, times, versions, git state), the folder released."""
    from .folder import release
    from .provenance import git_commit, git_state, versions

    _record_hash(state, summary, wait=False)  # a run that ended early: if it is already known
    summary["seconds"] = round(seconds, 3)
    summary["ended_at"] = _now()
    summary["versions"] = versions()
    summary["git_commit"] = git_commit(Path(__file__).resolve().parents[1])  # this package's
    if origins is not None and origins.config_dirs:  # the repository the configs came from: the user's
        summary["config_git"] = [git_state(Path(d)) or {"path": d, "commit": None, "dirty": None}
                                 for d in origins.config_dirs]
    try:
        _write_last(run_dir, summary)
    finally:
        release(run_dir)
        if "torch.distributed" in sys.modules:
            from ..training.distributed import leave

            leave()
    log.log(logging.INFO if summary["status"] != "failed" else logging.ERROR, "Run %s after %.1f s: %s",
            summary["status"], summary["seconds"], run_dir)


def _disk_full(e: BaseException) -> bool:
    """ENOSPC / EDQUOT, raised as such or inside a library's own error (torch.save, safetensors say it in words)."""
    import errno

    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(words in str(e) for words in ("No space left on device", "Disk quota exceeded"))


def _write_last(run_dir: Path, summary: dict[str, Any]) -> None:
    """The last summary.json, even on a full disk: then the room reserved at the start is given back first."""
    from ..files import write_json
    from .folder import free_reserve

    try:
        write_json(run_dir / "summary.json", summary)
    except OSError as e:
        if not _disk_full(e):
            raise
        try:
            if not free_reserve(run_dir):
                raise
            write_json(run_dir / "summary.json", summary)
        except OSError:  # full from the start (no reserve): say so, and let the run's own error through
            log.error("summary.json could not be written: the disk that holds %s is full", run_dir.resolve())
    free_reserve(run_dir)


def _record_config(run_dir: Path, origins: ConfigOrigins | None, summary: dict[str, Any]) -> None:
    """What `--rerun` checks before it runs this folder's config again: the SHA-256 of the config Hydra
    wrote (a config edited afterwards, or planted, no longer matches) and where the person's own code was."""
    import hashlib

    config = run_dir / ".hydra" / "config.yaml"
    if config.is_file():
        summary["config_sha256"] = hashlib.sha256(config.read_bytes()).hexdigest()
    if origins is not None and origins.code_dirs:
        summary["code_dirs"] = list(origins.code_dirs)


def _record_hash(state: Any, summary: dict[str, Any], wait: bool) -> None:
    """The source's SHA-256 (hashed in a thread beside the steps) into the summary: waited for at a normal
    end, taken only if already known when a run ends early."""
    hashing = getattr(state, "source_hash", None)
    if hashing is None or "source_sha256" in summary or not (wait or (hashing.done() and not hashing.failed)):
        return
    summary["source_sha256"] = hashing.result()


def _compare_source(summary: dict[str, Any], original: Path) -> None:
    """A re-run whose source file is no longer the one the original run read: say so, with both hashes."""
    import json

    try:
        before = json.loads((original / "summary.json").read_text()).get("source_sha256")
    except (OSError, ValueError, AttributeError):
        return
    summary["rerun_of"] = str(original)
    now = summary.get("source_sha256")
    if before and now and before != now:
        summary["source_changed"] = True
        log.warning("The source checkpoint is not the one %s was run with: its SHA-256 was %s and is now %s, so this "
                    "re-run cannot give the same result. Put the original file back, or compare both runs knowingly.",
                    original, before, now)


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
