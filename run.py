"""Entry point: `python run.py [overrides]` (see README.md). Hydra stays in this file and schema.py.

Exit codes: 0 done; 2 a mistake in the config or the inputs (the message says which); 130 / 143
interrupted by Ctrl-C / SIGTERM; 1 a bug (with its traceback) or a Hydra composition error. In a
`-m` sweep a failed job does not stop the others; the exit code is 2 if any job failed.
"""

from __future__ import annotations

import logging
import os
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
    if os.environ.get("TRANSFER_PIPELINE_RANK_FOLDER"):  # torchrun rank > 0: rank 0 tells the story
        log.setLevel(logging.WARNING)
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


def torchrun_rank_folder() -> None:
    """Under torchrun, rank 0 writes the run folder; every other rank runs in a temporary folder of its own
    (removed when it exits), so no two processes write one file."""
    if os.environ.get("WORLD_SIZE", "1") in ("", "1"):
        return
    if any(a in ("-m", "--multirun") or a.startswith("--multirun") for a in sys.argv[1:]):
        print("run.py: a -m sweep cannot run under torchrun (each job would be every process's); run the sweep "
              "without torchrun, or one torchrun command per job.", file=sys.stderr)
        sys.exit(2)
    if os.environ.get("RANK", "0") == "0":
        return
    import atexit
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix=f"transfer_pipeline_rank{os.environ['RANK']}_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["TRANSFER_PIPELINE_RANK_FOLDER"] = folder
    sys.argv = [a for a in sys.argv if not a.startswith("hydra.run.dir=")] + [f"hydra.run.dir={folder}"]


if __name__ == "__main__":
    torchrun_rank_folder()
    main()
    if FAILED_JOBS:
        log.error("%d job(s) failed: %s (each folder's summary.json says why)", len(FAILED_JOBS), ", ".join(FAILED_JOBS))
        sys.exit(2)
