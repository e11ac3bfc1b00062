"""Adapters in a run (adapters=lora | dora, source.adapter; docs/adapters.md): the `adapt` step and the outputs.

`adapt` runs after the load (the base holds its weights) and before `tune`, which then freezes and
groups the adapted model (tuning/adapters.py); with `source.adapter` it puts a saved adapter on
(tuning/adapter_reuse.py), for every mode. `finish` replaces fit's model.safetensors: with
adapters the run writes adapter/ and the merged weights, after checking the merge on a batch;
`exported` is mode=export's ending (the merged weights when an adapter is on).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from . import endings
from ..errors import UserError
from .state import Run

log = logging.getLogger(__name__)


def adapt(r: Run) -> None:
    """`adapters` / `source.adapter`: resolve the targets on the loaded base, show them, put the adapters in (peft),
    and for `source.adapter` the saved adapter's tensors."""
    a, spec = r.cfg.adapters, r.cfg.source.adapter
    if not a.enabled and spec is None:
        return
    from ..model_parts import expand_freeze
    from ..tuning.adapters import inject, plan_adapters

    freeze = expand_freeze(r.cfg.freeze, r.parts)
    if spec is not None:
        r.peft_model = put_saved(r, spec, freeze)
        return
    r.adapters = plan_adapters(r.model, a, r.parts.names(a.targets, "adapters.targets"), freeze, list(r.parts.head))
    r.peft_model = inject(r.model, r.adapters)
    log.info(r.adapters.describe())
    r.summary["adapters"] = r.adapters.to_dict()


def put_saved(r: Run, spec: str, freeze: Any) -> Any:
    """`source.adapter`: the saved adapter onto the loaded base, through the same injection as a fresh run.

    Training (mode=train, and its plan) goes on with adapters on, so `adapters=...` and `freeze` must
    describe this adapter; mode=eval / predict / export take everything from the folder.
    """
    from ..schema import Mode
    from ..sources.saved_adapter import read_saved
    from ..tuning.adapter_reuse import check_fits, check_modules, check_same, load_saved, saved_plan
    from ..tuning.adapters import inject, plan_adapters
    from .folder import check_source_outside

    a, mode = r.cfg.adapters, r.cfg.mode
    saved = read_saved(spec)
    check_source_outside([saved.folder / f for f in ("adapter_config.json", "adapter_model.safetensors")],
                         r.main_dir or r.run_dir, "source.adapter")
    targets = check_modules(r.model, saved)
    training = mode in (Mode.train, Mode.plan)
    if training and not a.enabled:
        raise UserError(f"source.adapter={spec}: mode={mode.value} trains the adapter on, which needs it described: "
                        f"add adapters={saved.method} adapters.rank={saved.rank} adapters.alpha={saved.alpha:g} (its "
                        "adapter_config.json); or use mode=eval, predict or export with the adapter as saved.")
    given = f"adapters={a.method.value}" if a.enabled else ""
    if training:  # the freeze config is checked as for fresh adapters, then must say what the adapter is
        selectors = (r.parts.names(a.targets, "adapters.targets") if a.targets is not None
                     else [f"re:{re.escape(t)}" for t in targets])  # exactly the saved layers
        r.adapters = plan_adapters(r.model, a, selectors, freeze, list(r.parts.head))
    else:
        chosen = targets
        if a.enabled and a.targets is not None:
            from ..tuning.adapters import resolve_targets

            chosen = resolve_targets(r.model, r.parts.names(a.targets, "adapters.targets"), list(r.parts.head))
        r.adapters = saved_plan(r.model, saved, chosen, a.dropout if a.enabled else saved.dropout, a.lr)
        if a.enabled:
            r.adapters.method, r.adapters.rank, r.adapters.alpha = a.method.value, a.rank, float(a.alpha)
    if given:
        check_same(saved, r.adapters, given)
    peft_model = inject(r.model, r.adapters)
    check_fits(peft_model, saved)
    meta_rank = r.sharded_load is not None and r.sharded_load.rank != 0  # fsdp: rank 0's values come by broadcast
    if mode != Mode.plan and not meta_rank:  # a plan reads no tensor data: names and shapes are checked
        load_saved(peft_model, saved, r.cfg.source.allow_nonfinite)
    log.info("%s\n  put on from source.adapter=%s (%s bytes, sha256 %s)", r.adapters.describe(), saved.folder,
             f"{saved.bytes:,}", saved.sha256[:16])
    r.summary["adapters"] = r.adapters.to_dict()
    r.summary["source_adapter"] = saved.to_dict()
    return peft_model


def not_loaded(r: Run) -> list[str]:
    """The target's tensors neither the load nor a saved adapter's head (source.adapter) gave a value."""
    missing = list(r.report.missing)
    if r.cfg.source.adapter is not None and r.adapters is not None:
        from ..tuning.adapters import _under

        missing = [n for n in missing if not _under(n, r.adapters.head)]
    return missing


def head_from_adapter(r: Run) -> bool:
    """Whether the outputs come from a head the saved adapter holds (so the base file's class names do not apply)."""
    return r.cfg.source.adapter is not None and r.adapters is not None and bool(r.adapters.head)


def write_merged(r: Run, which: str) -> float:
    """model.safetensors: the adapters merged into the base (target's names), after the merge is checked on a
    validation batch; returns the check's largest relative difference."""
    from .. import files
    from ..tuning.adapter_export import check_merge, merged_model

    merged = merged_model(r.peft_model, r.adapters.base_keys)
    x, _ = r.engine.batch(next(iter(r.loaders[1])))
    err = check_merge(r.model, merged, x, r.engine.output)
    files.save_weights(r.run_dir / "model.safetensors", merged.state_dict(),
                       {**weights_meta(r), "source": str(r.summary["source"]), "weights": f"{which}, adapters merged"})
    return err


def finish(r: Run, which: str) -> None:
    """adapter/ and model.safetensors (merged) from the model as it is now (`which`: last, or the best epoch).

    Under torchrun rank 0 alone writes them (fit calls this on rank 0 only). `r.peft_model` / `r.model` are the
    plain modules that DDP and torch.compile only wrap for the forward, so the merge and peft's saving see the
    adapted model's own names (no `module.` or `_orig_mod.`)."""
    from ..tuning.adapter_export import ADAPTER_DIR, MERGE_RTOL, write_adapter

    if not r.engine.is_main:  # another rank's copy: the same weights, rank 0 writes them
        return
    err = write_merged(r, which)  # checked before adapter/ is written: a bad merge writes neither
    size = write_adapter(r.peft_model, r.run_dir / ADAPTER_DIR)
    r.summary["adapters"].update(adapter_bytes=size, merge_max_rel_diff=float(err), merge_rtol=MERGE_RTOL,
                                 **err.to_dict())
    log.info("Adapters: adapter/ (peft format, %s bytes) and model.safetensors (merged; outputs agree to %.2g x "
             "their scale on a validation batch, allowed %g)", f"{size:,}", err, MERGE_RTOL)


def exported(r: Run) -> None:
    """mode=export: with source.adapter, model.safetensors is the adapter merged into the base (checked on a batch
    of the configured data); adapter/ is not copied (summary.json's source_adapter names it and its sha256)."""
    if r.peft_model is None:
        return endings.exported(r)
    from ..tuning.adapter_export import MERGE_RTOL
    from .recipe import data

    data(r)  # the batch the merge is checked on
    err = write_merged(r, f"source.adapter {r.cfg.source.adapter}")
    r.summary["adapters"].update(merge_max_rel_diff=float(err), merge_rtol=MERGE_RTOL, **err.to_dict())
    r.summary["status"] = "exported"
    log.info("Exported %s weights with the adapter merged in to %s (outputs agree to %.2g x their scale on a "
             "validation batch, allowed %g)", r.report.target_name, r.run_dir / "model.safetensors", err, MERGE_RTOL)


def final_weights(r: Run) -> Any:
    """fit's writer of the final weights with adapters: the best epoch's state put back if asked, then `finish`.
    Under trainer.strategy=fsdp fit gathers the weights to rank 0 (`weights`) and calls it there."""
    from ..schema import FinalWeights

    def write(job: Any, best: Any, weights: dict[str, Any] | None = None) -> None:
        if weights is not None:  # sharded: peft merges and saves a whole model, so rank 0 gets one of its own
            unshard(r, weights)
        path = r.run_dir / "checkpoints" / "best.safetensors"
        if r.cfg.trainer.final_weights == FinalWeights.best and path.is_file():
            from safetensors.torch import load_file

            r.model.load_state_dict(load_file(path))  # the adapted model's names: checkpoints hold its state
            finish(r, f"best epoch {best.epoch}")
        else:
            finish(r, "last")

    return write


def unshard(r: Run, weights: dict[str, Any]) -> None:
    """trainer.strategy=fsdp, rank 0, after training: `r.model` / `r.peft_model` become a whole (unsharded) copy of
    the adapted model holding the gathered `weights`, built and adapted as the run's was, for `finish`."""
    import torch

    from ..build import build_model
    from ..tuning.adapters import inject

    training = r.model.training
    with torch.random.fork_rng(devices=[]):  # the copy's own random init draws nothing from the run's generators
        model = build_model(r.model_node)
        peft_model = inject(model, r.adapters)
    model.load_state_dict(weights, assign=True)  # the gathered tensors themselves: no second copy of the weights
    r.model, r.peft_model = model.to(r.device).train(training), peft_model


def weights_meta(r: Run) -> dict[str, str]:
    from .recipe import weights_meta as meta

    return meta(r)
