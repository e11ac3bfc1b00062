"""Ctrl-C, SIGTERM and trainer.max_minutes during a run: `StopSignals`, and `TimeLimit` for a run that
ran out of its time. lifecycle.run_job installs them for the whole run; the training loop polls
`requested` to finish its step and save before it stops.
"""

from __future__ import annotations

import logging
import shlex
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import ConfigOrigins, Interrupted

log = logging.getLogger(__name__)


def _importing(frame: Any) -> bool:
    """Whether the main thread is inside an import (the frames of importlib's bootstrap are on its stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


HARD_STOP_AFTER_S = 60  # after trainer.max_minutes: how long a run may take to stop by itself


class TimeLimit(BaseException):
    """trainer.max_minutes ran out. `hard`: the run had not stopped by itself HARD_STOP_AFTER_S later and
    was ended from the timer. A BaseException, as KeyboardInterrupt is: no `except Exception` in a model
    or a dataset swallows it."""

    def __init__(self, minutes: float, hard: bool) -> None:
        super().__init__(f"trainer.max_minutes={minutes:g} reached")
        self.minutes = minutes
        self.hard = hard


class StopSignals:
    """Ctrl-C and SIGTERM during a run. While the loop trains (`graceful`), the first one asks it to
    finish the step and save (the loop polls `requested`); a second one, or one at any other time,
    raises Interrupted at once (files are written atomically, so none is left half-written).

    trainer.max_minutes (`start_limit`) is a SIGALRM timer that takes the same path as a first
    SIGTERM (signum SIGALRM), then, HARD_STOP_AFTER_S later, raises TimeLimit from the handler: a
    handler runs in the main thread between bytecodes and interrupts sleeps and blocking reads, so
    a step or a data loader that hangs in Python ends too (native code that never returns does not).
    """

    def __init__(self, origins: ConfigOrigins | None = None) -> None:
        self.graceful = False
        self.closing = False  # the run is writing its ending: further signals wait for it
        self.signum: int | None = None
        self.origins = origins
        self.limit: float | None = None  # trainer.max_minutes, once the config is read
        self.limit_reached = False
        self.timer: Any = None  # the SIGALRM handler before start_limit armed the timer (main thread only)

    def start_limit(self, minutes: float | None, started: float) -> None:
        """Arm the timer for trainer.max_minutes, counted from `started` (time.perf_counter() at the run's start)."""
        if minutes is None or threading.current_thread() is not threading.main_thread():
            return
        self.limit = minutes
        self.timer = signal.signal(signal.SIGALRM, self.handle_limit) or signal.SIG_DFL  # installed() puts it back
        signal.setitimer(signal.ITIMER_REAL, max(minutes * 60 - (time.perf_counter() - started), 0.001))

    def handle_limit(self, signum: int, frame: Any) -> None:
        if self.closing:
            return
        if self.limit_reached:  # HARD_STOP_AFTER_S later, still going
            raise TimeLimit(self.limit or 0.0, hard=True)
        if not self.graceful and _importing(frame):  # an import cut short leaves a module (torch) half made
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            return
        self.limit_reached = True
        signal.setitimer(signal.ITIMER_REAL, HARD_STOP_AFTER_S)
        if self.graceful and self.signum is None:
            self.signum = signum
            log.warning("trainer.max_minutes=%g reached: finishing this step and saving checkpoints/last.pt (last.dcp/ "
                        "under fsdp; the run is ended hard if it has not stopped in %d s)", self.limit, HARD_STOP_AFTER_S)
        elif not self.graceful:  # outside training: stop at once, as a first SIGTERM there does
            raise TimeLimit(self.limit or 0.0, hard=False)
        # else: a Ctrl-C / SIGTERM already asked the loop to stop; the hard stop backs it up

    def requested(self) -> bool:
        return self.signum is not None

    def handle(self, signum: int, frame: Any) -> None:
        if self.closing:
            return
        if self.graceful and self.signum is None:
            self.signum = signum
            log.warning("%s: finishing this step and saving checkpoints/last.pt (last.dcp/ under fsdp; press Ctrl-C "
                        "again to stop at once)",
                        signal.Signals(signum).name)
            return
        raise Interrupted(signum)

    def resume_command(self, run_dir: Path) -> str:
        from ..training.distributed import launched, launcher_command

        where = launched()  # multi-node jobs add their --nnodes / --rdzv-* options as before
        launcher = launcher_command(where[1]) if where is not None else "python run.py"
        return resume_command(self.origins.overrides if self.origins else None, run_dir, launcher)

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            if self.timer is not None:
                signal.setitimer(signal.ITIMER_REAL, 0)
                previous[signal.SIGALRM] = self.timer
            for s, handler in previous.items():
                signal.signal(s, handler)


def command_with(overrides: list[str] | tuple[str, ...] | None, drop: tuple[str, ...], add: str,
                 launcher: str = "python run.py") -> str:
    """The run's command again: its overrides (None: not known) less those starting with `drop`, then `add`."""
    keep = [o for o in overrides or () if not o.lstrip("+~").startswith(drop)]
    shown = " ".join(shlex.quote(o) for o in keep) if overrides is not None else "<the same overrides>"
    return f"{launcher} {shown} {add}".replace("  ", " ")


def resume_command(overrides: list[str] | tuple[str, ...] | None, run_dir: Path, launcher: str = "python run.py") -> str:
    """The command that continues the run in `run_dir` from its checkpoints/last.pt: the same overrides
    (None: not known), trainer.resume=auto and the same folder."""
    return command_with(overrides, ("trainer.resume", "hydra.run.dir"),
                        f"trainer.resume=auto hydra.run.dir={shlex.quote(str(run_dir))}", launcher)
