"""The `resume` step (`trainer.resume`): find the checkpoint to continue from and check it belongs to this config.

checkpoints/last.pt (training/checkpoint.py), or last.dcp/ under trainer.strategy=fsdp
(training/sharded_checkpoint.py: every rank reads its part; a stopped fsdp run may also be finished
in one process, which gathers the whole).
"""

from __future__ import annotations

import logging

from ..errors import UserError
from .state import Run

log = logging.getLogger(__name__)


def resume(r: Run) -> None:
    """`trainer.resume`: read the full-state checkpoint and check that it belongs to this config."""
    from ..files import resolve_path
    from ..training import checkpoint, sharded_checkpoint

    spec = r.cfg.trainer.resume
    if spec is None:
        return
    sharded = r.cfg.trainer.strategy.value == "fsdp"  # then checkpoints/last.dcp, read by every rank
    last = sharded_checkpoint.DIR if sharded else checkpoint.LAST
    path = (r.main_dir / "checkpoints" / last) if spec == "auto" else resolve_path(spec, "trainer.resume")
    if spec == "auto" and not path.exists() and not sharded and (path.parent / sharded_checkpoint.DIR).is_dir():
        path = path.parent / sharded_checkpoint.DIR  # a stopped fsdp run, finished in one process
    elif spec == "auto" and not path.exists():
        raise UserError(f"trainer.resume=auto continues the run in hydra.run.dir, and {r.main_dir} has no "
                        f"checkpoints/{last}. Give the stopped run's folder (hydra.run.dir=outputs/...; its "
                        f"summary.json has the resume_command), or trainer.resume=<path to a {last}>.")
    if sharded and path.is_file():
        raise UserError(f"trainer.resume: {path} is the checkpoint of a run without trainer.strategy=fsdp; "
                        f"trainer.strategy=fsdp resumes from checkpoints/{sharded_checkpoint.DIR}/. Resume it with "
                        "the strategy it was written with, or start a fresh run.")
    if path.is_dir():  # last.dcp: every rank reads its part; in one process without fsdp the whole is gathered
        rank, world = (r.group.rank, r.group.world) if r.group is not None else (0, 1)
        saved = sharded_checkpoint.read(path, rank, world)
    else:
        saved = checkpoint.load(path)
    diff = checkpoint.config_differences(saved["config"], checkpoint.flatten(r.cfg))
    if path.is_dir() and not sharded:  # a sharded run finished in one process: the sharding itself may differ
        diff = [d for d in diff if not d.startswith(("trainer.strategy:", "trainer.fsdp."))]
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
