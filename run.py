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

    from transfer_pipeline.errors import UserError
    from transfer_pipeline.pipeline import run

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = run(to_run_config(cfg), run_dir)
    except UserError as e:
        log.error("error: %s", e)
        sys.exit(2)
    return summary.get("val_acc")  # what a sweeper optimises


if __name__ == "__main__":
    main()
