"""`hydra/sweeper=search`: Hydra's Optuna sweeper, ending in a message when no trial completed.

Optuna asks for the best trial after the last one; with every trial failed (a bad value on the
command line, NaN losses) that is a ValueError and a traceback from inside the plugin, and the
sweep folder never gets its summary. `guard_optuna` wraps the plugin's sweep (Hydra only takes
sweepers from its own plugin package, so a subclass of ours cannot be named in the config): the
folder gets its summary, and the person one line saying why.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any


def guard_optuna() -> None:
    """Wrap OptunaSweeperImpl.sweep once (run.py calls this when the command names the sweeper)."""
    try:
        from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
    except ImportError:
        return  # not installed: run.py's plugin check says what to install
    if getattr(OptunaSweeperImpl.sweep, "guarded", False):
        return
    plain = OptunaSweeperImpl.sweep

    @functools.wraps(plain)
    def sweep(self: Any, arguments: list[str]) -> None:
        try:
            return plain(self, arguments)
        except ValueError as e:
            if "No trials are completed" not in str(e):
                raise
        every_trial_failed(Path(self.config.hydra.sweep.dir))

    sweep.guarded = True  # type: ignore[attr-defined]
    OptunaSweeperImpl.sweep = sweep


def every_trial_failed(sweep_dir: Path) -> None:
    from .sweep_summary import report

    report(sweep_dir)
    print(f"error: hydra/sweeper=search: every trial failed, so there are no best parameters (each job's "
          f"summary.json in {sweep_dir} says why; sweep_summary.csv lists them).", file=sys.stderr)
    sys.exit(2)
