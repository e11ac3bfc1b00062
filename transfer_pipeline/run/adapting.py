"""Adapters in a run (adapters=lora | dora, docs/adapters.md): the `adapt` step and the run's adapter outputs.

`adapt` runs after the load (the base holds its weights) and before `tune`, which then freezes and
groups the adapted model (tuning/adapters.py). `finish` replaces fit's model.safetensors: with
adapters the run writes adapter/ and the merged weights, after checking the merge on a batch.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import UserError
from .state import Run

log = logging.getLogger(__name__)


def adapt(r: Run) -> None:
    """`adapters`: resolve the targets on the loaded base, show them, and put the adapters in (peft)."""
    a = r.cfg.adapters
    if not a.enabled:
        return
    from ..model_parts import expand_freeze
    from ..tuning.adapters import inject, plan_adapters

    if r.group is not None:
        raise UserError(f"torchrun (DDP, {r.group.world} processes) with adapters (adapters.method={a.method.value}) "
                        "is not supported yet: run in one process.")
    freeze = expand_freeze(r.cfg.freeze, r.parts)
    r.adapters = plan_adapters(r.model, a, r.parts.names(a.targets, "adapters.targets"), freeze, list(r.parts.head))
    r.peft_model = inject(r.model, r.adapters)
    log.info(r.adapters.describe())
    r.summary["adapters"] = r.adapters.to_dict()


def finish(r: Run, which: str) -> None:
    """adapter/ and model.safetensors (merged) from the model as it is now (`which`: last, or the best epoch)."""
    from .. import files
    from ..tuning.adapter_export import ADAPTER_DIR, MERGE_RTOL, check_merge, merged_model, write_adapter

    merged = merged_model(r.peft_model, r.adapters.base_keys)
    x, _ = r.engine.batch(next(iter(r.loaders[1])))
    err = check_merge(r.model, merged, x, r.engine.output)
    size = write_adapter(r.peft_model, r.run_dir / ADAPTER_DIR)
    files.save_weights(r.run_dir / "model.safetensors", merged.state_dict(),
                       {**weights_meta(r), "source": str(r.summary["source"]), "weights": f"{which}, adapters merged"})
    r.summary["adapters"].update(adapter_bytes=size, merge_max_rel_diff=err, merge_rtol=MERGE_RTOL)
    log.info("Adapters: adapter/ (peft format, %s bytes) and model.safetensors (merged; outputs agree to %.2g x "
             "their scale on a validation batch, allowed %g)", f"{size:,}", err, MERGE_RTOL)


def final_weights(r: Run) -> Any:
    """fit's writer of the final weights with adapters: the best epoch's state put back if asked, then `finish`."""
    from ..schema import FinalWeights

    def write(job: Any, best: Any) -> None:
        path = r.run_dir / "checkpoints" / "best.safetensors"
        if r.cfg.trainer.final_weights == FinalWeights.best and path.is_file():
            from safetensors.torch import load_file

            r.model.load_state_dict(load_file(path))  # the adapted model's names: checkpoints hold its state
            finish(r, f"best epoch {best.epoch}")
        else:
            finish(r, "last")

    return write


def weights_meta(r: Run) -> dict[str, str]:
    from .recipe import weights_meta as meta

    return meta(r)
