"""LoadPlan -> a short table on the terminal and load_report.json in the run folder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .mapping import LoadPlan, TensorMeta


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "  ") -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, indent + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report_dict(plan: LoadPlan, source_description: str | None, target_name: str) -> dict[str, Any]:
    """The content of load_report.json (field names are public: keep them stable)."""
    return {
        "source": source_description,
        "target": target_name,
        "stripped_prefix": plan.stripped_prefix,
        "loaded": plan.loaded,
        "missing": plan.missing,
        "unexpected": plan.unexpected,
        "mismatched": plan.mismatched,
        "renamed": plan.renamed,
        "excluded": plan.excluded,
        "loaded_fraction": plan.loaded_fraction,
        "rule_hits": plan.rule_hits,
    }


def _module(name: str) -> str:
    return name.split(".", 1)[0]


def format_plan(plan: LoadPlan, target: Mapping[str, TensorMeta], source_description: str | None,
                notes: Sequence[str] = ()) -> str:
    """One row per top-level module of the target: what loaded, what did not and why."""
    loaded, mismatched = set(plan.loaded), {m["target"] for m in plan.mismatched}
    excluded = set(plan.excluded)
    rows: dict[str, list[int]] = {}
    for name in target:
        r = rows.setdefault(_module(name), [0, 0, 0, 0, 0])  # tensors, loaded, mismatched, excluded, new
        r[0] += 1
        r[1] += name in loaded
        r[2] += name in mismatched
        r[3] += name in excluded
        r[4] += name not in loaded and name not in mismatched and name not in excluded

    def status(r: list[int]) -> str:
        if r[1] == r[0]:
            return "loaded"
        parts = [f"{n} {what}" for n, what in ((r[2], "shape mismatch, skipped"), (r[3], "excluded"),
                                               (r[4], "not in source")) if n]
        return ("partly loaded: " if r[1] else "fresh init: ") + ", ".join(parts)

    table = format_table(["module", "loaded", "status"], [[m, f"{r[1]}/{r[0]}", status(r)] for m, r in rows.items()])
    lines = [f"Load plan: {source_description or 'no source (architecture only)'}"]
    lines += [f"  note: {n}" for n in notes]
    if plan.stripped_prefix:
        lines.append(f"  stripped prefix: {plan.stripped_prefix!r}")
    by_rules = {s: t for s, t in plan.renamed.items() if s.removeprefix(plan.stripped_prefix) != t}
    if by_rules:
        shown = [f"{s} -> {t}" for s, t in list(by_rules.items())[:4]]
        more = f" (+{len(by_rules) - 4} more)" if len(by_rules) > 4 else ""
        lines.append(f"  renamed by rules {len(by_rules)}: {', '.join(shown)}{more}")
    lines.append(table)
    for m in plan.mismatched:
        lines.append(f"  mismatch {m['target']}: source {tuple(m['source_shape'])} vs target {tuple(m['target_shape'])}")
    if plan.unexpected:
        more = f" (+{len(plan.unexpected) - 6} more)" if len(plan.unexpected) > 6 else ""
        lines.append(f"  unused source tensors {len(plan.unexpected)}: {', '.join(plan.unexpected[:6])}{more}")
    lines.append(f"  loaded {len(plan.entries)}/{len(target)} tensors, {plan.loaded_fraction:.2%} of target elements")
    return "\n".join(lines)
