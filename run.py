"""Entry point: `python run.py [overrides]` (see README.md). Hydra stays in this file and schema.py."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from transfer_pipeline.schema import register_configs, to_run_config

register_configs()
log = logging.getLogger("transfer_pipeline")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from transfer_pipeline.errors import ConfigOrigins, UserError
    from transfer_pipeline.pipeline import run

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    origins = ConfigOrigins({g: c for g, c in hydra_cfg.runtime.choices.items() if not g.startswith("hydra/")},
                            tuple(o.lstrip("+~").split("=", 1)[0] for o in hydra_cfg.overrides.task))
    try:
        run_cfg = to_run_config(cfg)  # the schema's range checks
    except UserError as e:
        log.error("error: %s%s", e, origins.hint(str(e)))
        sys.exit(2)
    try:
        summary = run(run_cfg, run_dir, origins)  # its errors carry the hint already
    except UserError as e:
        log.error("error: %s", e)
        sys.exit(2)
    return summary.get("val_acc")  # what a sweeper optimises


if __name__ == "__main__":
    main()
