"""Hydra callbacks (listed under `hydra.callbacks` in conf/config.yaml): Hydra's side of the run folder,
and the summary at the end of a sweep (sweep_summary.py).

Hydra writes `.hydra/` and opens `run.log` in the run folder before the task starts, so the
folder is claimed here first (run/folder.py): a folder in use or holding another run is
refused before Hydra touches it. Like run.py and schema/, this is the edge where Hydra stays.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ..errors import UserError


class RunFolderGuard(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from ..run.folder import claim

        resume = OmegaConf.select(config, "trainer.resume") is not None
        _or_exit(lambda: claim(Path(config.hydra.run.dir), resume))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from ..run.folder import check_ours, mark

        sweep = Path(config.hydra.sweep.dir).resolve()

        def check() -> None:
            check_ours(sweep, "hydra.sweep.dir", "sweep")
            done = sorted(p.parent.name for p in sweep.glob("*/summary.json"))
            if done:
                raise UserError(f"hydra.sweep.dir: {sweep.resolve()} already holds the jobs of another sweep "
                                f"({', '.join(done[:5])}{' ...' if len(done) > 5 else ''}). Give this sweep a fresh "
                                "folder (hydra.sweep.dir=...; the default is a new timestamped folder).")
            try:
                sweep.mkdir(parents=True, exist_ok=True)
                mark(sweep, "sweep")  # its job folders are then the tool's too
            except OSError as e:
                raise UserError(f"hydra.sweep.dir: cannot use {sweep} ({e.strerror or e}). Choose a folder you can "
                                "write, e.g. hydra.sweep.dir=outputs/my_sweep.") from None

        _or_exit(check)


INCOMPLETE_JOBS: list[str] = []  # the last sweep's jobs that did not complete, for run.py's exit code


class SweepSummary(Callback):
    """At the end of a `-m` sweep: sweep_summary.csv, the table sorted by trainer.monitor, sweep_summary.png."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from .sweep_summary import report

        INCOMPLETE_JOBS[:] = report(Path(config.hydra.sweep.dir))


def _or_exit(fn: Any) -> None:
    try:
        fn()
    except UserError as e:  # Hydra's logging is not set up yet: say it on stderr
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
