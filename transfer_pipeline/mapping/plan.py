"""The load plan: which source tensor goes into which target parameter, from names and shapes alone.

Pure: no tensor data is read here, which is what makes `mode=plan` instant and plans easy to
test. Steps: strip wrapper prefixes (`module.`, `_orig_mod.`, `model.` ...), apply the ordered
rules (renames, and ops that concat/split/transpose/... tensors: op_specs.py checks their shapes),
match the rest by name, optionally pair what is left by module order and shape
(`mapping.auto: shape_order`), then compare shapes with the target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError, close_names
from .prefixes import PrefixChoice, choose_prefixes, nothing_loaded_error
from .op_specs import plan_op
from .rules import Rule, RuleMatcher, group_outputs, parse_rules, prefix_hint
from ..patterns import Match
from ..schema import MappingConfig, SourceConfig
from ..selectors import check_selector, select, select_all
from ..tensor_meta import TensorMeta, dtype_kind


@dataclass(frozen=True)
class LoadEntry:
    """One target tensor and how to make it: `op` applied to `sources` (names as stored)."""

    sources: tuple[str, ...]
    target: str
    shape: tuple[int, ...]  # the target's shape (what `op` produces)
    source_dtype: str
    target_dtype: str
    op: str = "copy"  # a kernel in op_kernels.py
    args: tuple[tuple[str, Any], ...] = ()  # the op's arguments, as sorted (key, value) pairs
    rule: int | None = None  # the mapping.rules index that planned it; None: same name (or auto)

    @property
    def source(self) -> str:
        return self.sources[0]


@dataclass(frozen=True)
class TargetInfo:
    """What names and shapes do not say about the target: which are buffers, which share a tensor, BN layers."""

    buffers: frozenset[str] = frozenset()  # persistent buffers (their constructor values stand when not loaded)
    aliases: tuple[tuple[str, ...], ...] = ()  # groups of names of one tensor (tied weights, reused modules)
    batchnorm: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = ()  # (layer, affine names, statistics names)


@dataclass
class LoadPlan:
    entries: list[LoadEntry]
    missing: list[str]  # target names left to their fresh initialisation
    unexpected: list[str]  # source names not used
    mismatched: list[dict[str, Any]]  # {source, target, source_shape, target_shape}
    renamed: dict[str, str]  # source -> target, where the names differ
    excluded: list[str]  # target names kept out by mapping.exclude
    stripped_prefix: str  # '' when none
    loaded_fraction: float  # loaded target elements / all target elements
    rule_hits: list[int] = field(default_factory=list)  # source tensors each rule matched
    auto_pairs: dict[str, str] = field(default_factory=dict)  # source -> target paired by mapping.auto
    notes: list[str] = field(default_factory=list)  # e.g. ambiguous shapes mapping.auto refused to pair
    added_prefix: str = ""  # put in front of source names after stripping (a prefix swap); '' when none
    tied: dict[str, str] = field(default_factory=dict)  # target name -> the loaded name it shares its tensor with
    kept: list[str] = field(default_factory=list)  # unloaded buffers: they keep what the model's constructor gave them
    warnings: list[str] = field(default_factory=list)  # e.g. BatchNorm statistics left unloaded

    @property
    def loaded(self) -> list[str]:
        return [e.target for e in self.entries] + list(self.tied)

    @property
    def prefix(self) -> PrefixChoice:
        return PrefixChoice((self.stripped_prefix,) if self.stripped_prefix else (), self.added_prefix)


def prefix_choice(source: Mapping[str, TensorMeta], target: Mapping[str, TensorMeta], rules: Sequence[Rule],
                  prefixes: SourceConfig, matcher: RuleMatcher | None = None) -> PrefixChoice:
    """The prefix step: `source.strip_prefixes` / `add_prefix` when set, else detected (rename rules counted)."""
    rename = (matcher or RuleMatcher(rules)).rename if rules else None
    return choose_prefixes(source, target, prefixes.strip_prefixes, prefixes.add_prefix, rename)


def plan_load(source: Mapping[str, TensorMeta], target: Mapping[str, TensorMeta],
              mapping: MappingConfig | None = None, prefixes: SourceConfig | None = None,
              info: TargetInfo | None = None) -> LoadPlan:
    """Plan the load of `source` into `target` (both {name: TensorMeta}).

    `mapping`: the `mapping.*` keys (rules, exclude, on_mismatch, auto); `prefixes`: the
    `source.*` node, of which `strip_prefixes` / `add_prefix` are read. Defaults: the schema's.
    `mapping.expect` is checked separately (`check_expectations`), after the plan is shown.
    `info` (from the model: mapping.apply.describe_target) makes tied names count as loaded,
    unloaded buffers as kept from the constructor, and warns about unloaded BatchNorm statistics.
    """
    mapping = mapping or MappingConfig()
    prefixes = prefixes or SourceConfig()
    rules = parse_rules(mapping.rules)
    matcher = RuleMatcher(rules)
    prefix = prefix_choice(source, target, rules, prefixes, matcher)
    excluded = set(select_all(mapping.exclude, list(target), "mapping.exclude")) if mapping.exclude else set()

    names = _match_names(source, target, matcher, prefix, excluded)
    _check_rules_matched(rules, names.hits, source, prefix)
    planned = _plan_op_rules(rules, names.claims, source, target, excluded, names.writers)
    used = set(names.mapped.values()) | {s for e in planned.values() for s in e.sources}
    renamed = names.renamed
    for e in planned.values():
        if len(e.sources) > 1 or e.op != "split":
            renamed.update({s: e.target for s in e.sources if s != e.target})

    auto, notes = _auto_entries(names, source, target, excluded) if mapping.auto is not None else ({}, [])
    auto_pairs = {e.source: t for t, e in auto.items()}
    planned.update(auto)
    used |= set(auto_pairs)
    renamed.update({s: t for s, t in auto_pairs.items() if s != t})

    entries, mismatched = _entries(source, target, planned, names)
    _check_shapes(mismatched, mapping.on_mismatch.value)
    _check_casts(entries, prefixes.allow_lossy_cast)

    loaded = {e.target for e in entries}
    tied, kept, warnings = _target_facts(info or TargetInfo(), loaded, excluded, target)
    loaded |= set(tied)
    total = sum(m.numel for m in target.values())
    return LoadPlan(
        entries=entries,
        missing=[t for t in target if t not in loaded],
        unexpected=[n for n in source if n not in used],
        mismatched=mismatched,
        renamed=renamed,
        excluded=[t for t in target if t in excluded],
        stripped_prefix=prefix.stripped,
        loaded_fraction=(sum(target[t].numel for t in loaded) / total) if total else 0.0,
        rule_hits=names.hits,
        auto_pairs=auto_pairs,
        notes=notes,
        added_prefix=prefix.add,
        tied=tied,
        kept=kept,
        warnings=warnings,
    )


@dataclass
class _NameMatches:
    """What the pass over the source names found: the plan's steps after it read (and extend) these."""

    hits: list[int]  # source tensors each rule matched
    writers: dict[str, tuple[tuple[str, ...], int | None]] = field(default_factory=dict)  # target -> (sources, rule)
    mapped: dict[str, str] = field(default_factory=dict)  # target -> source, by name or by a rename rule
    rule_of: dict[str, int] = field(default_factory=dict)  # target -> the rename rule that mapped it
    renamed: dict[str, str] = field(default_factory=dict)  # source -> target, where the names differ
    claims: dict[int, list[tuple[str, str, int, Match]]] = field(default_factory=dict)  # op rule -> its sources
    unclaimed: list[str] = field(default_factory=list)  # no rule and no target of that name (for mapping.auto)


def _match_names(source: Mapping[str, TensorMeta], target: Mapping[str, TensorMeta], matcher: RuleMatcher,
                 prefix: PrefixChoice, excluded: set[str]) -> _NameMatches:
    """Each source name after the prefix step: renamed by the first rule that matches it (or kept), and
    mapped when the target has that name; names an op rule matched are set aside for `_plan_op_rules`."""
    rules = matcher.rules
    found = _NameMatches(hits=[0] * len(rules))
    for name in source:
        short = prefix.apply(name)
        hit = matcher.match(short)
        tname, rule_i = short, None
        if hit is not None:
            rule_i, j, m = hit
            found.hits[rule_i] += 1
            rule = rules[rule_i]
            if rule.op != "rename":
                found.claims.setdefault(rule_i, []).append((name, short, j, m))
                continue
            tname = rule.expand(rule.to, m, short)
        if tname not in target or tname in excluded:
            if rule_i is None and tname not in target:
                found.unclaimed.append(name)
            continue
        _claim(found.writers, tname, (name,), rule_i)
        found.mapped[tname] = name
        if rule_i is not None:
            found.rule_of[tname] = rule_i
        if tname != name:
            found.renamed[name] = tname
    return found


def _check_rules_matched(rules: Sequence[Rule], hits: Sequence[int], source: Mapping[str, TensorMeta],
                         prefix: PrefixChoice) -> None:
    """A rule that matches no source tensor is a typo until marked `optional: true`."""
    for i, (rule, n) in enumerate(zip(rules, hits)):
        if n == 0 and not rule.optional:
            pats = rule.patterns or (rule.pattern,)
            shown = pats[0].pattern if len(pats) == 1 else "[" + ", ".join(f"'{p.pattern}'" for p in pats) + "]"
            seen = [prefix.apply(n) for n in source]  # the names as the rule saw them
            hint = list(dict.fromkeys(h for p in pats for h in close_names(p.pattern, seen)))[:5]
            raise UserError(f"mapping.rules[{i}]: 'from: {shown}' matches no source tensor "
                            f"(after the prefix step: {prefix.describe()}). "
                            f"Closest source names: {', '.join(hint) or ', '.join(seen[:5])}."
                            f"{prefix_hint(rule, source, prefix)} Mark the rule 'optional: true' if that is expected.")


def _auto_entries(names: _NameMatches, source: Mapping[str, TensorMeta], target: Mapping[str, TensorMeta],
                  excluded: set[str]) -> tuple[dict[str, LoadEntry], list[str]]:
    """`mapping.auto` (shape_order, the one way; the schema checked the value): entries for the leftover
    tensors paired by shape (target -> entry, in target order), and the notes on what it refused to pair."""
    free = [t for t in target if t not in names.writers and t not in excluded]
    pairs, notes = auto_pair(names.unclaimed, free, source, target)
    return {t: LoadEntry((s,), t, target[t].shape, source[s].dtype, target[t].dtype) for s, t in pairs}, notes


def _entries(source: Mapping[str, TensorMeta], target: Mapping[str, TensorMeta], planned: Mapping[str, LoadEntry],
             names: _NameMatches) -> tuple[list[LoadEntry], list[dict[str, Any]]]:
    """(the load entries in target order, the name matches whose shapes differ)."""
    entries, mismatched = [], []
    for tname, meta in target.items():
        if tname in planned:
            entries.append(planned[tname])
            continue
        sname = names.mapped.get(tname)
        if sname is None:
            continue
        smeta = source[sname]
        if smeta.shape != meta.shape:
            mismatched.append({"source": sname, "target": tname,
                               "source_shape": list(smeta.shape), "target_shape": list(meta.shape)})
            continue
        entries.append(LoadEntry((sname,), tname, meta.shape, smeta.dtype, meta.dtype, rule=names.rule_of.get(tname)))
    return entries, mismatched


def _check_shapes(mismatched: Sequence[dict[str, Any]], on_mismatch: str) -> None:
    """`mapping.on_mismatch=error`: a same-named tensor of another shape stops the run (skip: left fresh)."""
    if mismatched and on_mismatch == "error":
        lines = "\n".join(f"  {m['target']}: source {tuple(m['source_shape'])} vs target {tuple(m['target_shape'])}"
                          for m in mismatched)
        raise UserError(f"mapping.on_mismatch=error: {len(mismatched)} tensor(s) have another shape in the target:\n"
                        f"{lines}\nFix: set mapping.on_mismatch=skip to leave them freshly initialised, "
                        "list them in mapping.exclude, or change the model so the shapes agree.")


def _check_casts(entries: Sequence[LoadEntry], allow_lossy_cast: bool) -> None:
    """A load that changes a tensor's kind (float <-> int <-> bool) loses or invents information: only on request."""
    changed = [e for e in entries if dtype_kind(e.source_dtype) != dtype_kind(e.target_dtype)]
    if changed and not allow_lossy_cast:
        lines = "\n".join(f"  {e.target}: {e.source_dtype} -> {e.target_dtype}" for e in changed[:10])
        more = f"\n  (+{len(changed) - 10} more)" if len(changed) > 10 else ""
        raise UserError(f"source.allow_lossy_cast: {len(changed)} tensor(s) would change kind when loaded, which loses or "
                        f"invents information:\n{lines}{more}\nFix: map them to tensors of their own kind (mapping.rules, "
                        "mapping.exclude), or set source.allow_lossy_cast=true if the cast is what you want.")


def _target_facts(info: TargetInfo, loaded: set[str], excluded: set[str],
                  target: Mapping[str, TensorMeta]) -> tuple[dict[str, str], list[str], list[str]]:
    """(tied: name -> its loaded alias, kept: unloaded buffers, warnings) for the plan."""
    tied = {}
    for names in info.aliases:
        source = next((n for n in names if n in loaded), None)
        if source is not None:
            tied.update({n: source for n in names if n not in loaded and n in target})
    kept = [t for t in target if t in info.buffers and t not in loaded and t not in tied]
    warnings = []
    for layer, affine, stats in info.batchnorm:
        left = [s for s in stats if s not in loaded and s.rsplit(".", 1)[-1] != "num_batches_tracked"]
        if left and any(a in loaded for a in affine) and not any(s in excluded for s in left):
            warnings.append(f"BatchNorm {layer or '<root>'}: its weights load but its running statistics "
                            f"({', '.join(s.rsplit('.', 1)[-1] for s in left)}) do not: they keep the constructor's "
                            "0/1, so the model will not behave like the source until they are trained or loaded")
    return tied, kept, warnings


def _claim(writers: dict[str, tuple[tuple[str, ...], int | None]], target: str, sources: tuple[str, ...],
           rule: int | None) -> None:
    """Record who writes `target`; a second writer is an error (two rules, or a rule and a name match)."""
    if target in writers:
        prev, prev_rule = writers[target]

        def names(ss: tuple[str, ...]) -> str:
            return " + ".join(repr(s) for s in ss)

        def by(r: int | None) -> str:
            return f"mapping.rules[{r}]" if r is not None else "name"

        raise UserError(f"mapping.rules: source tensors {names(prev)} and {names(sources)} both map to target "
                        f"{target!r} (by {by(prev_rule)} and by {by(rule)}); make the rules tell them apart.")
    writers[target] = (sources, rule)


def _plan_op_rules(rules: Sequence[Rule], claims: Mapping[int, Sequence[tuple[str, str, int, Match]]],
                   source: Mapping[str, TensorMeta], target: Mapping[str, TensorMeta], excluded: set[str],
                   writers: dict[str, tuple[tuple[str, ...], int | None]]) -> dict[str, LoadEntry]:
    """The entries of the rules that transform tensors (concat, split ...), shapes checked: target -> entry."""
    planned: dict[str, LoadEntry] = {}
    for i in sorted(claims):
        rule = rules[i]
        outputs = group_outputs(rule, claims[i])
        absent = [o.target for o in outputs if o.target not in target]
        if outputs and len(absent) == len(outputs) and not rule.optional:
            hint = close_names(absent[0], list(target))
            raise UserError(f"{rule.where} ({rule.op}): matched {len(claims[i])} source tensor(s) (e.g. "
                            f"{claims[i][0][0]}) but none of its targets is in the target model (e.g. {absent[0]!r}). "
                            f"Closest target names: {', '.join(hint) or ', '.join(list(target)[:5])}. Fix `to`.")
        for out in outputs:
            if out.target in absent or out.target in excluded:
                continue
            _claim(writers, out.target, out.sources, i)
            metas = [source[s] for s in out.sources]
            tmeta = target[out.target]
            op, args = plan_op(rule, out.sources, [m.shape for m in metas], out.target, tmeta.shape, out.part)
            planned[out.target] = LoadEntry(out.sources, out.target, tmeta.shape, metas[0].dtype, tmeta.dtype,
                                            op, args, i)
    return planned


def auto_pair(sources: Sequence[str], targets: Sequence[str], source: Mapping[str, TensorMeta],
              target: Mapping[str, TensorMeta]) -> tuple[list[tuple[str, str]], list[str]]:
    """`mapping.auto: shape_order`: pair leftover tensors by shape, in module order, refusing ambiguity.

    For each shape, the i-th source tensor of that shape goes to the i-th target tensor of that
    shape, but only when both sides have the same number of them; otherwise which one is which
    cannot be told from shapes, so none of them is paired and a note says so.
    """
    by_source: dict[tuple[int, ...], list[str]] = {}
    by_target: dict[tuple[int, ...], list[str]] = {}
    for n in sources:
        by_source.setdefault(source[n].shape, []).append(n)
    for n in targets:
        by_target.setdefault(target[n].shape, []).append(n)
    pairs: dict[str, str] = {}
    notes = []
    for shape, ss in by_source.items():
        ts = by_target.get(shape, [])
        if not ts:
            continue
        if len(ss) != len(ts):
            notes.append(f"mapping.auto: not pairing shape {shape}: {len(ss)} source tensor(s) "
                         f"({', '.join(ss[:4])}{' ...' if len(ss) > 4 else ''}) vs {len(ts)} target tensor(s) "
                         f"({', '.join(ts[:4])}{' ...' if len(ts) > 4 else ''}) is ambiguous; add rules for them")
            continue
        pairs.update(zip(ts, ss))
    return [(pairs[t], t) for t in targets if t in pairs], notes


def check_expectations(plan: LoadPlan, missing: Sequence[str] | None, min_loaded: float,
                       source: Mapping[str, TensorMeta] | None = None,
                       target: Mapping[str, TensorMeta] | None = None) -> None:
    """`mapping.expect`: a load that loaded less than declared is an error before training.

    `source`/`target`: both sides' names and shapes (`source` None: no source, nothing to load);
    a source that loads nothing at all is always an error, showing the two side by side.
    """
    if source is not None and not plan.entries:
        raise nothing_loaded_error(source, target or {}, plan.prefix, len(plan.mismatched))
    if plan.loaded_fraction + 1e-12 < min_loaded:
        raise UserError(f"mapping.expect.min_loaded={min_loaded}: only {plan.loaded_fraction:.1%} of the target's "
                        f"elements were loaded ({len(plan.loaded)} of {len(plan.loaded) + len(plan.missing)} tensors; "
                        f"missing e.g. {', '.join(plan.missing[:5])}).")
    if missing is None:
        return
    allowed: set[str] = set()
    for sel in missing:
        check_selector(sel, "mapping.expect.missing")
        hit = select(sel, plan.missing)
        if not hit:
            raise UserError(f"mapping.expect.missing: {sel!r} was expected to stay unloaded, but no unloaded "
                            f"target tensor matches it (it loaded, or names no parameter). Unloaded: "
                            f"{', '.join(plan.missing[:8]) or 'none'}.")
        allowed.update(hit)
    kept = set(plan.kept)  # constructor-filled buffers are not a lost load: the report says "kept"
    surprise = [t for t in plan.missing if t not in allowed and t not in kept]
    if surprise:
        raise UserError(f"mapping.expect.missing: {len(surprise)} target tensor(s) were not loaded but are not "
                        f"declared missing: {', '.join(surprise[:10])}. Fix the mapping (rules, prefixes) or add "
                        "them to mapping.expect.missing.")
