"""LoadPlan -> a short table on the terminal and load_report.json in the run folder; the API's LoadReport."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..names import group_by_component
from ..schema import ExpectConfig
from ..tables import format_table
from ..tensor_meta import TensorMeta
from .plan import LoadEntry, LoadPlan, check_expectations


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
        "loaded_tensors_fraction": len(plan.loaded) / max(len(plan.loaded) + len(plan.missing), 1),
        "kept": plan.kept,  # unloaded buffers: their constructor values stand (they are in `missing` too)
        "tied": plan.tied,  # target -> the loaded name whose tensor it shares
        "warnings": plan.warnings,
        "rule_hits": plan.rule_hits,
        "entries": [entry_dict(e, e.target in plan.auto_pairs.values()) for e in plan.entries],
        # only when the prefix step added one (a swap 'encoder.' -> 'backbone.', or a target-only prefix)
        **({"added_prefix": plan.added_prefix} if plan.added_prefix else {}),
    }


def _plain(v: Any) -> Any:
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def entry_dict(entry: LoadEntry, auto: bool = False) -> dict[str, Any]:
    """One planned target in load_report.json: its sources, the ops that make it, the rule that planned it."""
    return {"target": entry.target, "sources": list(entry.sources), "shape": list(entry.shape),
            "ops": [{"op": entry.op, **{k: _plain(v) for k, v in entry.args}}], "rule": entry.rule, "auto": auto}


def _op_label(entry: LoadEntry, auto_targets: set[str]) -> str | None:
    if entry.op != "copy":
        return entry.op
    return "auto" if entry.target in auto_targets else None


def _status(r: list[int], ops: dict[str, int]) -> str:
    """r: tensors, loaded, mismatched, excluded, new, kept; ops: how many loaded tensors each op made."""
    detail = f" ({', '.join(f'{n} {op}' for op, n in ops.items())})" if ops else ""
    if r[1] == r[0]:
        return "loaded" + detail
    parts = [f"{n} {what}" for n, what in ((r[2], "shape mismatch, skipped"), (r[3], "excluded"),
                                           (r[4], "not in source"), (r[5], "kept from the constructor")) if n]
    if r[5] and r[5] + r[1] == r[0]:
        return ("partly loaded" + detail + ": " if r[1] else "") + ", ".join(parts)
    return ("partly loaded" + detail + ": " if r[1] else "fresh init: ") + ", ".join(parts)


def _tree_rows(names: Sequence[str], kind: Mapping[str, int], ops: Mapping[str, str]) -> list[list[str]]:
    """Rows of the module tree: a module whose tensors all fared alike is one row; others open up."""
    rows: list[list[str]] = []

    def visit(label: str, members: list[str], depth: int) -> None:
        r, op_counts = [len(members), 0, 0, 0, 0, 0], {}
        for n in members:
            r[kind[n]] += 1
            if n in ops:
                op_counts[ops[n]] = op_counts.get(ops[n], 0) + 1
        rows.append([label, f"{r[1]}/{r[0]}", _status(r, op_counts)])
        if len({kind[n] for n in members}) > 1:
            items = list(group_by_component(members, depth).items())
            for k, (part, sub) in enumerate(items):
                visit("  " * (depth - 1) + ("└ " if k == len(items) - 1 else "├ ") + part, sub, depth + 1)

    for part, sub in group_by_component(names).items():
        visit(part, sub, 1)
    return rows


def _rule_lines(plan: LoadPlan) -> list[str]:
    """What each rule matched and made, with one example (every rule reports, even one that did nothing)."""
    by_rule: dict[int, list[LoadEntry]] = {}
    for e in plan.entries:
        if e.rule is not None:
            by_rule.setdefault(e.rule, []).append(e)
    lines = []
    for i, hits in enumerate(plan.rule_hits):
        es = by_rule.get(i, [])
        op = es[0].op if es else ""
        args = " ".join(f"{k}={_short(v)}" for k, v in es[0].args if k != "index") if es else ""
        head = f"  rules[{i}]{' ' + op if op and op != 'copy' else ' rename' if es else ''}{' ' + args if args else ''}"
        text = f"{head}: {hits} source tensor(s) -> {len(es)} target(s)"
        if es:
            e = es[0]
            arrow = f"{' + '.join(e.sources)} -> {e.target} {tuple(e.shape)}"
            text += f", e.g. {arrow}" + (f" (+{len(es) - 1} more)" if len(es) > 1 else "")
        lines.append(text)
    return lines


def format_plan(plan: LoadPlan, target: Mapping[str, TensorMeta], source_description: str | None,
                notes: Sequence[str] = ()) -> str:
    """The module tree of the target (one row per module, opened only where its tensors fared
    differently): what loaded, by which op, what did not and why; then what each rule did."""
    loaded, mismatched = set(plan.loaded), {m["target"] for m in plan.mismatched}
    excluded = set(plan.excluded)
    kept = set(plan.kept)
    # 1 loaded, 2 mismatched, 3 excluded, 4 new, 5 kept (the index into the counts of _status)
    kind = {n: 1 if n in loaded else 2 if n in mismatched else 3 if n in excluded else 5 if n in kept else 4
            for n in target}
    auto_targets = set(plan.auto_pairs.values())
    ops = {e.target: op for e in plan.entries if (op := _op_label(e, auto_targets))}
    ops.update({n: "tied" for n in plan.tied})
    table = format_table(["module", "loaded", "status"], _tree_rows(list(target), kind, ops))
    lines = [f"Load plan: {source_description or 'no source (architecture only)'}"]
    lines += [f"  note: {n}" for n in notes]
    if plan.stripped_prefix or plan.added_prefix:
        lines.append(f"  {plan.prefix.describe()}")
    lines += _rule_lines(plan)
    if plan.auto_pairs:
        lines.append(f"  mapping.auto=shape_order paired {len(plan.auto_pairs)} tensor(s) by module order and shape:")
        lines += _capped([f"    {s} -> {t} {tuple(target[t].shape)}" for s, t in plan.auto_pairs.items()], "pairs")
    lines += _capped([f"  note: {n}" for n in plan.notes], "notes")
    lines += [f"  warning: {w}" for w in plan.warnings]
    lines.append(table)
    lines += _capped([f"  mismatch {m['target']}: source {tuple(m['source_shape'])} vs target {tuple(m['target_shape'])}"
                      for m in plan.mismatched], "mismatches")
    if plan.unexpected:
        lines.append(_unused_line(plan))
    n_loaded, n_all = len(plan.loaded), len(target)
    lines.append(f"  loaded {n_loaded}/{n_all} tensors ({n_loaded / max(n_all, 1):.1%}), "
                 f"{plan.loaded_fraction:.2%} of target elements")
    return "\n".join(lines)


def _unused_line(plan: LoadPlan) -> str:
    """The unused source tensors, named as `mapping.rules` see them (after the prefix step), so that a name copied
    from here into a rule's `from` matches; the prefix is said once. load_report.json's `unexpected` keeps the
    names as stored (as `renamed` and `mismatched` do), with `stripped_prefix` beside them."""
    shown = [plan.prefix.apply(n) for n in plan.unexpected]
    view = plan.prefix.rule_view() if shown != plan.unexpected else ""
    how = f" (named as mapping.rules see them, {view})" if view else ""
    more = f" (+{len(shown) - 6} more)" if len(shown) > 6 else ""
    return f"  unused source tensors {len(shown)}{how}: {', '.join(shown[:6])}{more}"


MAX_LINES = 20  # per list in the terminal; load_report.json keeps every one


def _capped(lines: list[str], what: str) -> list[str]:
    if len(lines) <= MAX_LINES:
        return lines
    return lines[:MAX_LINES] + [f"    ... (+{len(lines) - MAX_LINES} more {what}: load_report.json lists them all)"]


def _short(value: Any, most: int = 8) -> Any:
    """A long list as its first items and a count (1,152 `select` indices fit on no line)."""
    v = _plain(value)
    if isinstance(v, list) and len(v) > most:
        return "[" + ", ".join(map(str, v[:most])) + f", ... ({len(v)} in all)]"
    return v


@dataclass
class LoadReport:
    """What a load did (or, from a plan, will do): the table on the terminal and load_report.json.

    `loaded`, `missing` are target names; `unexpected` source names; `mismatched` a list of
    {source, target, source_shape, target_shape}; `loaded_fraction` loaded target elements / all.
    `str(report)` is the table the pipeline prints.
    """

    plan: LoadPlan
    target: dict[str, TensorMeta]
    source_meta: dict[str, TensorMeta] | None  # None: no source (architecture only)
    source: str | None = None  # the source's description
    target_name: str = ""
    notes: list[str] = field(default_factory=list)

    loaded = property(lambda self: self.plan.loaded)
    missing = property(lambda self: self.plan.missing)
    unexpected = property(lambda self: self.plan.unexpected)
    mismatched = property(lambda self: self.plan.mismatched)
    renamed = property(lambda self: self.plan.renamed)
    loaded_fraction = property(lambda self: self.plan.loaded_fraction)

    def table(self) -> str:
        return format_plan(self.plan, self.target, self.source, self.notes)

    __str__ = table

    def __repr__(self) -> str:
        return (f"LoadReport({len(self.loaded)}/{len(self.target)} tensors loaded, "
                f"{self.loaded_fraction:.2%} of elements, {len(self.missing)} missing, "
                f"{len(self.unexpected)} unexpected, {len(self.mismatched)} mismatched)")

    def to_dict(self) -> dict[str, Any]:
        return report_dict(self.plan, self.source, self.target_name)

    def check(self, expect: ExpectConfig) -> None:
        """`mapping.expect` (and: a source that loads nothing is an error), before any training."""
        check_expectations(self.plan, expect.missing, expect.min_loaded, self.source_meta, self.target)
