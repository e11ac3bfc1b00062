"""The load's aids around the plan: rules from a file, suggested rules, the numerical proof of a load.

`with_rules_file` and `suggest` are called by recipe.plan; `verify` is a step of recipe.STEPS
(after load). The work itself is in mapping/suggest.py and mapping/verify.py.
"""

from __future__ import annotations

import logging
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
    files.atomic_write_bytes(r.run_dir / "suggested_rules.yaml", text.encode())
    r.summary.update(suggested_rules=len(got.rules), suggested_loads=got.loaded, ambiguous_modules=len(got.ambiguous))
    log.info("%s\n(written to %s)", printable_text(got.describe()), r.run_dir / "suggested_rules.yaml")


def verify(r: Run) -> None:
    """`mapping.verify`: prove the load before anything is written with it (mapping/verify.py).

    With a source model: both run on the same seeded input (or a validation batch), compared module
    by module; without one: every loaded tensor against its source tensor after the op.
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
    src = source_module(r.cfg.source, v, r.weights, plan.stripped_prefix)
    if src is not None:
        sample = None
        if v.input_shape is None and r.loaders:
            from ..model_io import split_batch

            sample = split_batch(next(iter(r.loaders[1])), r.cfg.data.target_key)[0]
        result = verify_outputs(src.to(r.device), r.model, plan, verify_inputs(v, sample), v.atol, v.rtol,
                                source_output=v.source_output, target_output=r.cfg.model.get(MODEL_OUTPUT_KEY))
    else:
        result = verify_tensors(plan, r.weights, r.model.state_dict())
    files.write_json(r.run_dir / "verify.json", result.to_dict())
    r.summary["verified"] = result.ok
    if not result.ok:
        raise UserError(f"{result.describe()}\nNothing was written with these weights (verify.json has the details); "
                        "fix mapping.rules (mode=plan shows the pairs), or loosen mapping.verify.atol / rtol if the "
                        "difference is rounding.")
    log.info("%s", result.describe())
