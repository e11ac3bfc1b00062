"""The load's aids around the plan: rules from a file, suggested rules, the numerical proof of a load.

`with_rules_file` and `suggest` are called by recipe.plan; `verify` is a step of recipe.STEPS
(after load). The work itself is in mapping/suggest.py and mapping/verify.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from ..errors import UserError
from .state import Run
from ..names import printable_text
from ..schema import MODEL_OUTPUT_KEY


log = logging.getLogger(__name__)


def with_rules_file(mapping: Any) -> Any:
    """`mapping.rules_file` (e.g. a suggested_rules.yaml): its rules after mapping.rules."""
    if mapping.rules_file is None:
        return mapping
    from ..mapping.rules import parse_rules
    from ..mapping.suggest import read_rules_file
    from ..files import resolve_path

    path = resolve_path(mapping.rules_file, "mapping.rules_file")
    rules = read_rules_file(path)
    try:  # checked on their own first, so that an error names the file and the rule's place in it
        parse_rules(rules)
    except UserError as e:
        raise UserError(str(e).replace("mapping.rules[", f"mapping.rules_file ({path}) rule [", 1)) from None
    return replace(mapping, rules=list(mapping.rules) + rules)


def suggest(r: Run, report: Any, weights: Any, mapping: Any) -> None:
    """Rules for what names left unmatched (mapping/suggest.py): printed, and written to suggested_rules.yaml."""
    from ..mapping.apply import describe_target
    from ..mapping.suggest import suggest_rules
    from .. import files

    plan = report.plan
    if not (plan.unexpected or plan.mismatched) or not set(plan.missing) - set(plan.excluded):
        return  # nothing on one side or the other: no rule can help
    got = suggest_rules(weights.meta, report.target, plan, mapping, r.cfg.source, describe_target(r.model))
    text = (f"# Suggested by mode=plan for {report.source}: loads {got.loaded} more tensor(s) ({got.elements:,} "
            f"elements); {len(got.missing)} would stay unloaded.\n# Paste under your experiment's mapping:, or use as "
            "is: python run.py ... mapping.rules_file=<this file>\n" + got.yaml())
    if got.ambiguous:
        text += "# Ambiguous, not suggested:\n" + "".join(f"#   {a}\n" for a in got.ambiguous)
    if got.unpaired:
        text += "# Unpaired (no target of their signature left):\n" + "".join(f"#   {u}\n" for u in got.unpaired)
    files.atomic_write_bytes(r.run_dir / "suggested_rules.yaml", text.encode())
    r.summary.update(suggested_rules=len(got.rules), suggested_loads=got.loaded, ambiguous_modules=len(got.ambiguous),
                     suggested_op_rules=len(got.op_rules), unpaired_modules=len(got.unpaired))
    log.info("%s\n(written to %s)", printable_text(got.describe()), r.run_dir / "suggested_rules.yaml")


def suggestion_first(r: Run, error: UserError) -> UserError:
    """A load that took nothing by name, after suggested_rules.yaml was written: the file and the command
    that uses it come first, ahead of the generic fixes (which never knew of the file)."""
    import shlex

    from .signals import command_with

    path = r.run_dir / "suggested_rules.yaml"
    if not r.summary.get("suggested_rules") or not path.is_file() or "loaded nothing" not in str(error):
        return error
    origins = r.signals.origins if r.signals is not None else None
    command = command_with(origins.overrides if origins is not None else None, ("mapping.rules_file", "hydra.run.dir"),
                           f"mapping.rules_file={shlex.quote(str(path))}")
    return UserError(f"The source loaded nothing by name; the {r.summary['suggested_rules']} suggested rule(s) "
                     f"above load {r.summary.get('suggested_loads', 0)} tensor(s) and are written to {path}. Use them "
                     f"(add mapping.verify.enabled=true to prove the load):\n  {command}\n\n{error}")


def verify(r: Run) -> None:
    """`mapping.verify`: prove the load before anything is written with it (mapping/verify.py).

    With a source model: both run on the same seeded input (or a validation batch), compared module
    by module; without one: every loaded tensor against its source tensor after the op. With adapters
    (adapters=..., source.adapter) the load is the base's: it is verified with the adapters disabled
    (peft's disable_adapter), on the base layers under the load's names, and verify.json says so.
    """
    v = r.cfg.mapping.verify
    if not v.enabled:
        return
    from ..mapping.verify import source_module, verify_inputs, verify_outputs
    from ..mapping.verify_tensors import verify_tensors
    from .. import files

    if r.weights is None:
        raise UserError("mapping.verify.enabled=true: there is no source (source.path, source.model, source.weights) "
                        "to verify the load against.")
    plan = r.report.plan
    notes: list[str] = []  # e.g. the tensors of the file that mapping.verify.source_model leaves out
    src = source_module(r.cfg.source, v, r.weights, plan.stripped_prefix, notes)
    sample = _data_sample(r) if src is not None and v.input_shape is None else None
    with _base_only(r) as (modules, state):
        if src is not None:
            result = verify_outputs(src.to(r.device), r.model, plan, verify_inputs(v, sample), v.atol, v.rtol,
                                    source_output=v.source_output, target_output=r.cfg.model.get(MODEL_OUTPUT_KEY),
                                    target_modules=modules)
            result.notes[:0] = notes
        else:
            result = verify_tensors(plan, r.weights, state if state is not None else r.model.state_dict())
    what = _what_was_verified(r)
    files.write_json(r.run_dir / "verify.json", {**result.to_dict(), **({"verified_model": what} if what else {})})
    r.summary["verified"] = result.ok
    text = result.describe() + (f"\n  verified: {what}" if what else "")
    if not result.ok:
        raise UserError(f"{text}\nNothing was written with these weights (verify.json has the details); "
                        "fix mapping.rules (mode=plan shows the pairs), or loosen mapping.verify.atol / rtol if the "
                        "difference is rounding.")
    log.info("%s", text)


@contextmanager
def _base_only(r: Run) -> Iterator[tuple[Any, Any]]:
    """With adapters on (r.peft_model): the adapters disabled while verify runs, and the base's modules and
    tensors under the load's names, (modules, state); without: (None, None), nothing changed."""
    if r.peft_model is None:
        yield None, None
        return
    from ..tuning.adapter_export import plain_modules, plain_state

    with r.peft_model.disable_adapter():
        yield plain_modules(r.model, adapted=False), plain_state(r.model)


def _what_was_verified(r: Run) -> str | None:
    """With adapters: what verify checked (the base, as loaded), for verify.json and the log; None without."""
    if r.peft_model is None:
        return None
    a = r.adapters
    on = f"adapters.method={a.method} on {len(a.targets)} layer(s)" if a is not None else "adapters"
    saved = f", source.adapter={r.cfg.source.adapter}" if r.cfg.source.adapter is not None else ""
    return (f"the base as loaded, with the adapters disabled ({on}{saved}): the load is proven; the adapters "
            "are not part of it (the merge check compares them with the merged weights)")


def _data_sample(r: Run) -> Any:
    """The inputs of the first validation batch: the run's own loader, else (mode=export reads no data
    otherwise) the configured data read here, so a source model is checked on real inputs, as in training."""
    from ..model_io import split_batch

    loader = r.loaders[1] if r.loaders else None
    if loader is None:
        from ..data.datasets import build_data, eval_loader
        from ..data.preprocess import preset_source

        if r.data is None:
            r.data = build_data(r.cfg.data, r.cfg.seed, preset_source(r.cfg.source))
        loader = eval_loader(r.data.val, r.cfg.trainer.batch_size)
        log.info("mapping.verify: no input_shape given, so the check runs on the first validation batch of the "
                 "configured data (data: %s)", r.cfg.data.name)
    return split_batch(next(iter(loader)), r.cfg.data.target_key)[0]
