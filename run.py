"""Entry point: `python run.py [overrides]` (see README.md). Hydra stays in this file and schema.py.

Exit codes: 0 done; 2 a mistake in the config or the inputs (the message says which); 130 / 143
interrupted by Ctrl-C / SIGTERM; 1 a bug (with its traceback) or a Hydra composition error. In a
`-m` sweep a failed job does not stop the others; the exit code is 2 if any job failed.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from transfer_pipeline.schema import register_configs, to_run_config

register_configs()
log = logging.getLogger("transfer_pipeline")
FAILED_JOBS: list[str] = []  # run folders of the sweep jobs that failed with a UserError


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from transfer_pipeline.errors import ConfigOrigins, UserError
    from transfer_pipeline.lifecycle import Interrupted, run_job

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = tuple(hydra_cfg.overrides.task)
    origins = ConfigOrigins({g: c for g, c in hydra_cfg.runtime.choices.items() if not g.startswith("hydra/")},
                            overrides)
    try:
        summary = run_job(lambda: to_run_config(cfg), run_dir, origins, resume=cfg.trainer.resume is not None)
    except UserError:  # already logged, and recorded in summary.json
        if hydra_cfg.mode == RunMode.MULTIRUN:
            FAILED_JOBS.append(str(run_dir))
            return None
        sys.exit(2)
    except Interrupted as e:
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        sys.exit(130)
    return summary.get(f"best_{summary.get('monitor')}", summary.get("val_acc"))  # what a sweeper optimises: the best


if __name__ == "__main__":
    main()
    if FAILED_JOBS:
        log.error("%d job(s) failed: %s (each folder's summary.json says why)", len(FAILED_JOBS), ", ".join(FAILED_JOBS))
        sys.exit(2)
