"""The load plan: which source tensor goes into which target parameter, from names and shapes alone.

Pure: no tensor data is read here, which is what makes `mode=plan` instant and plans easy to
test. Steps: strip wrapper prefixes (`module.`, `_orig_mod.`, `model.` ...), apply the ordered
rename rules, then compare names and shapes with the target.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError, close_names
from .selectors import check_selector, select, select_all


@dataclass(frozen=True)
class TensorMeta:
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern
    to: str
    optional: bool = False


@dataclass(frozen=True)
class LoadEntry:
    """One target tensor and how to make it: `op` applied to `sources` (names as stored)."""

    sources: tuple[str, ...]
    target: str
    shape: tuple[int, ...]  # the target's shape (what `op` produces)
    source_dtype: str
    target_dtype: str
    op: str = "copy"  # see ops.py
    args: tuple[tuple[str, Any], ...] = ()  # the op's arguments, as sorted (key, value) pairs

    @property
    def source(self) -> str:
        return self.sources[0]


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
    rule_hits: list[int] = field(default_factory=list)  # source tensors each rule renamed

    @property
    def loaded(self) -> list[str]:
        return [e.target for e in self.entries]


RULE_KEYS = {"from", "to", "op", "optional"}
RULE_OPS = ("rename",)


def parse_rules(raw: Sequence[Mapping[str, Any]]) -> list[Rule]:
    rules = []
    for i, r in enumerate(raw):
        where = f"mapping.rules[{i}]"
        if not isinstance(r, Mapping):
            raise UserError(f"{where}: a rule is a mapping like {{from: 'features\\.(\\d+)', to: 'backbone.\\1'}}, got {r!r}.")
        unknown = set(r) - RULE_KEYS
        if unknown:
            raise UserError(f"{where}: unknown key(s) {sorted(unknown)}; a rule takes {sorted(RULE_KEYS)}.")
        if "from" not in r or "to" not in r:
            raise UserError(f"{where}: a rule needs both 'from' (a regex) and 'to' (a template with \\1 groups).")
        op = r.get("op", "rename") or "rename"
        if op not in RULE_OPS:
            raise UserError(f"{where}: op {op!r} is not supported; choose one of {list(RULE_OPS)}.")
        try:
            pattern = re.compile(str(r["from"]))
        except re.error as e:
            raise UserError(f"{where}.from: {r['from']!r} is not a valid regex: {e}.") from None
        rules.append(Rule(pattern, str(r["to"]), bool(r.get("optional", False))))
    return rules


def apply_rules(name: str, rules: Sequence[Rule]) -> tuple[str, int | None]:
    """The target name for `name` (first rule that matches wins) and that rule's index."""
    for i, rule in enumerate(rules):
        m = rule.pattern.fullmatch(name)
        if m:
            try:
                return m.expand(rule.to), i
            except (re.error, IndexError) as e:
                raise UserError(f"mapping.rules[{i}].to: {rule.to!r} cannot be filled from {name!r}: {e}.") from None
    return name, None


def _strip(name: str, prefix: str) -> str:
    return name[len(prefix):] if prefix and name.startswith(prefix) else name


def _score(names: Sequence[str], source: Mapping[str, TensorMeta], target: Mapping[str, TensorMeta],
           rules: Sequence[Rule], renames: Sequence[str]) -> int:
    hits = 0
    for orig, name in zip(names, renames):
        t = target.get(apply_rules(name, rules)[0])
        hits += t is not None and t.shape == source[orig].shape
    return hits


def detect_prefix(source: Mapping[str, TensorMeta], target: Mapping[str, TensorMeta],
                  rules: Sequence[Rule] = ()) -> str:
    """The wrapper prefix to strip from source names ('module.', 'module._orig_mod.' ...).

    Greedy: strip the leading name components (up to three at once) that most increase
    name+shape matches with the target, until nothing helps; the shortest wins a tie. Nothing is hard-coded, so `net.`, `model.` or `ema.` work too.
    """
    names = list(source)
    current = list(names)
    best = _score(names, source, target, rules, current)
    stripped = ""
    while True:
        # one to three leading components at once: 'module._orig_mod.' helps only when whole
        candidates = sorted({".".join(n.split(".")[:k]) + "." for n in current for k in (1, 2, 3)
                             if n.count(".") >= k}, key=len)
        choice = None
        for p in candidates:
            trial = [_strip(n, p) for n in current]
            s = _score(names, source, target, rules, trial)
            if s > best:
                best, choice = s, p
        if choice is None:
            return stripped
        current = [_strip(n, choice) for n in current]
        stripped += choice


def plan_load(source: Mapping[str, TensorMeta], target: Mapping[str, TensorMeta],
              rules: Sequence[Mapping[str, Any]] = (), on_mismatch: str = "error",
              exclude: Sequence[str] = (), strip_prefixes: Sequence[str] | None = None) -> LoadPlan:
    """Plan the load of `source` into `target` (both {name: TensorMeta})."""
    parsed = parse_rules(rules)
    if strip_prefixes is None:
        prefixes = [detect_prefix(source, target, parsed)] if source else []
    else:
        prefixes = list(strip_prefixes)
        for p in prefixes:
            if not any(n.startswith(p) for n in source):
                raise UserError(f"source.strip_prefixes: no source name starts with {p!r} "
                                f"(first names: {', '.join(list(source)[:5])}).")
    excluded = set(select_all(exclude, list(target), "mapping.exclude")) if exclude else set()

    hits = [0] * len(parsed)
    mapped: dict[str, str] = {}  # target -> source
    renamed: dict[str, str] = {}
    unexpected: list[str] = []
    for name in source:
        short = name
        for p in prefixes:
            short = _strip(short, p)
        tname, rule_i = apply_rules(short, parsed)
        if rule_i is not None:
            hits[rule_i] += 1
        if tname in mapped:
            raise UserError(f"mapping.rules: source tensors {mapped[tname]!r} and {name!r} both map to "
                            f"target {tname!r}; make the rules tell them apart.")
        if tname not in target or tname in excluded:
            unexpected.append(name)
            continue
        mapped[tname] = name
        if tname != name:
            renamed[name] = tname

    for i, (rule, n) in enumerate(zip(parsed, hits)):
        if n == 0 and not rule.optional:
            hint = close_names(rule.pattern.pattern, list(source))
            raise UserError(f"mapping.rules[{i}]: 'from: {rule.pattern.pattern}' matches no source tensor "
                            f"(after stripping prefix {''.join(prefixes) or 'none'!r}). "
                            f"Closest source names: {', '.join(hint) or ', '.join(list(source)[:5])}. "
                            "Mark the rule 'optional: true' if that is expected.")

    entries, mismatched = [], []
    for tname, meta in target.items():
        sname = mapped.get(tname)
        if sname is None:
            continue
        smeta = source[sname]
        if smeta.shape != meta.shape:
            mismatched.append({"source": sname, "target": tname,
                               "source_shape": list(smeta.shape), "target_shape": list(meta.shape)})
            continue
        entries.append(LoadEntry((sname,), tname, meta.shape, smeta.dtype, meta.dtype))

    if mismatched and on_mismatch == "error":
        lines = "\n".join(f"  {m['target']}: source {tuple(m['source_shape'])} vs target {tuple(m['target_shape'])}"
                          for m in mismatched)
        raise UserError(f"mapping.on_mismatch=error: {len(mismatched)} tensor(s) have another shape in the target:\n"
                        f"{lines}\nFix: set mapping.on_mismatch=skip to leave them freshly initialised, "
                        "list them in mapping.exclude, or change the model so the shapes agree.")

    loaded = {e.target for e in entries}
    total = sum(m.numel for m in target.values())
    return LoadPlan(
        entries=entries,
        missing=[t for t in target if t not in loaded],
        unexpected=unexpected,
        mismatched=mismatched,
        renamed=renamed,
        excluded=[t for t in target if t in excluded],
        stripped_prefix="".join(prefixes),
        loaded_fraction=(sum(math.prod(e.shape) for e in entries) / total) if total else 0.0,
        rule_hits=hits,
    )


def check_expectations(plan: LoadPlan, missing: Sequence[str] | None, min_loaded: float,
                       has_source: bool) -> None:
    """`mapping.expect`: a load that loaded less than declared is an error before training."""
    if has_source and not plan.entries:
        raise UserError("The source loaded nothing into the target: no name and shape matched. "
                        f"Source names: {', '.join(plan.unexpected[:5])}; target names: "
                        f"{', '.join(plan.missing[:5])}. Fix: add mapping.rules renames or "
                        "source.strip_prefixes.")
    if plan.loaded_fraction + 1e-12 < min_loaded:
        raise UserError(f"mapping.expect.min_loaded={min_loaded}: only {plan.loaded_fraction:.1%} of the target's "
                        f"elements were loaded ({len(plan.entries)} tensors; {len(plan.missing)} missing, "
                        f"e.g. {', '.join(plan.missing[:5])}).")
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
    surprise = [t for t in plan.missing if t not in allowed]
    if surprise:
        raise UserError(f"mapping.expect.missing: {len(surprise)} target tensor(s) were not loaded but are not "
                        f"declared missing: {', '.join(surprise[:10])}. Fix the mapping (rules, prefixes) or add "
                        "them to mapping.expect.missing.")
