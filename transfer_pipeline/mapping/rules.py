"""`mapping.rules`: parse them, match source names, and group what each rule takes into its targets.

A rule is `{from, to, op, optional}` plus the op's own keys. `rename` (the default) maps one
source name to one target name; the other ops also transform the tensor: op_specs.py holds each
op's keys and shape plan, op_kernels.py its kernel. This module parses the rules, matches source names and
groups the tensors a rule takes into the targets it writes. Pure: no torch, no tensor data;
errors name the rule (`mapping.rules[2].sizes`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..patterns import Match, Pattern, PatternError, compile_pattern, expand, fullmatch
from .op_specs import OPS, OpSpec, _is_list

if TYPE_CHECKING:
    from .prefixes import PrefixChoice

RULE_KEYS = {"from", "to", "op", "optional"} | {k for spec in OPS.values() for k in spec.keys}


@dataclass(frozen=True)
class Rule:
    pattern: Pattern  # the first (for concat: of several) `from` regex
    to: str  # the first (for split: of several) `to` template
    optional: bool = False
    op: str = "rename"
    patterns: tuple[Pattern, ...] = ()  # every `from` regex (concat: one per part, in order)
    targets: tuple[str, ...] = ()  # every `to` template (split: one per part, in order)
    args: tuple[tuple[str, Any], ...] = ()  # the op's keys, checked, as sorted (key, value) pairs
    index: int = 0  # position in mapping.rules (for messages)

    @property
    def where(self) -> str:
        return f"mapping.rules[{self.index}]"

    @property
    def spec(self) -> OpSpec:
        return OPS[self.op]

    def arg(self, key: str) -> Any:
        return dict(self.args).get(key, self.spec.keys[key].default if key in self.spec.keys else None)

    def match(self, name: str) -> tuple[int, Match] | None:
        """(which `from` pattern, its match) for the first pattern that matches all of `name`."""
        for j, p in enumerate(self.patterns or (self.pattern,)):
            m = fullmatch(p, name, f"{self.where}.from")
            if m:
                return j, m
        return None

    def expand(self, template: str, m: Match, name: str) -> str:
        try:
            return expand(m, template)
        except (PatternError, IndexError) as e:
            raise UserError(f"{self.where}.to: {template!r} cannot be filled from {name!r}: {e}.") from None


# --- parsing -----------------------------------------------------------------------------------------

def _compile(p: Any, where: str) -> Pattern:
    if not isinstance(p, str):
        raise UserError(f"{where}: expected a regex string, got {p!r}.")
    try:
        return compile_pattern(p)
    except PatternError as e:
        raise UserError(f"{where}: {p!r} is not a valid regex: {e}.") from None


def _parse_args(spec: OpSpec, r: Mapping[str, Any], where: str, n_targets: int) -> tuple[tuple[str, Any], ...]:
    """The op's own keys of rule `r`, each checked by its spec (and the spec's cross-key check)."""
    wrong = sorted(k for k in r if k not in {"from", "to", "op", "optional"} and k not in spec.keys)
    if wrong:
        takes = f"takes {sorted(spec.keys)}" if spec.keys else "takes no other keys"
        raise UserError(f"{where}: key(s) {wrong} do not apply to op {spec.name!r}; {spec.name} {takes}.")
    args = {key: spec.keys[key].check(r[key], f"{where}.{key}") for key in spec.keys if r.get(key) is not None}
    if spec.finish is not None:
        args = spec.finish(args, where, n_targets)
    return tuple(sorted(args.items()))


def parse_rules(raw: Sequence[Mapping[str, Any]]) -> list[Rule]:
    """`mapping.rules` -> Rules; every mistake that shows without the tensors is reported here."""
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
        if op not in OPS:
            raise UserError(f"{where}: op {op!r} is not supported; choose one of {list(OPS)}.")
        spec = OPS[op]
        froms, tos = r["from"], r["to"]
        if spec.many_from:
            if not _is_list(froms) or len(froms) < 2:
                raise UserError(f"{where}.from: op {op} takes a list of two or more regexes, one per part in "
                                f"order (e.g. the q, k and v weights), got {froms!r}.")
        elif _is_list(froms):
            raise UserError(f"{where}.from: op {op} takes one regex; a list of regexes is for op concat.")
        if spec.many_to:
            if not _is_list(tos) or len(tos) < 2 or not all(isinstance(t, str) for t in tos):
                raise UserError(f"{where}.to: op {op} takes a list of two or more target templates, one per "
                                f"part in order, got {tos!r}.")
        elif _is_list(tos):
            raise UserError(f"{where}.to: op {op} takes one target template; a list of templates is for op split.")
        elif tos is None:
            raise UserError(f"{where}.to is empty: give the target name template (with \\1 for groups).")
        elif not isinstance(tos, str):
            raise UserError(f"{where}.to: expected a target name template (a string, with \\1 for groups), got "
                            f"{tos!r} ({type(tos).__name__}); quote it in YAML: to: '{tos}'.")
        froms = list(froms) if _is_list(froms) else [froms]
        tos = list(tos) if _is_list(tos) else [tos]
        patterns = tuple(_compile(p, f"{where}.from" + (f"[{j}]" if spec.many_from else ""))
                         for j, p in enumerate(froms))
        if len({p.groups for p in patterns}) > 1:
            raise UserError(f"{where}.from: the patterns capture {[p.groups for p in patterns]} groups; every "
                            "pattern of a concat rule must capture the same groups (the layer index ...), "
                            "which is how the parts of one target are found.")
        args = _parse_args(spec, r, where, len(tos))
        rules.append(Rule(patterns[0], tos[0], bool(r.get("optional", False)), op, patterns, tuple(tos), args, i))
    return rules


def match_rule(name: str, rules: Sequence[Rule]) -> tuple[int, int, Match] | None:
    """(rule index, pattern index, match) of the first rule that matches `name`."""
    for i, rule in enumerate(rules):
        hit = rule.match(name)
        if hit:
            return i, hit[0], hit[1]
    return None


METACHARS = set(".^$*+?{}[]|()")
QUANTIFIERS = set("*?{")  # may repeat the character before them zero times


def _literal_parts(pattern: str) -> tuple[str, bool]:
    """(the literal text a pattern starts with, whether that is the whole pattern). Conservative: a pattern
    with an alternation or an inline group option anywhere has no literal prefix."""
    if "|" in pattern or "(?" in pattern:
        return "", False
    text, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 >= len(pattern) or pattern[i + 1].isalnum():  # \d \w \1 ...: a class or a reference
                return "".join(text), False
            c, width = pattern[i + 1], 2
        elif c in METACHARS:
            return "".join(text), False
        else:
            width = 1
        if i + width < len(pattern) and pattern[i + width] in QUANTIFIERS:
            return "".join(text), False
        text.append(c)
        i += width
    return "".join(text), True


class RuleMatcher:
    """`match_rule` for many names at once, as fast as a dict where it can be.

    A rule whose `from` is a plain name (most rules a script or `mapping.suggest` writes) is found by
    lookup; the others are tried only on names that start with their literal prefix (`encoder.` for `encoder\\.(\\d+)...`),
    in rule order, so the first rule that matches still wins. Each name's answer is kept: prefix
    detection asks for the same names under many candidate prefixes. Planning with R rules and N
    names costs about N lookups plus the regex rules whose prefix fits, instead of N x R matches.
    """

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = list(rules)
        self._exact: dict[str, list[tuple[int, int]]] = {}
        self._by_prefix: dict[str, list[tuple[int, int]]] = {}
        for i, rule in enumerate(self.rules):
            for j, p in enumerate(rule.patterns or (rule.pattern,)):
                text, whole = _literal_parts(p.pattern)
                (self._exact if whole else self._by_prefix).setdefault(text, []).append((i, j))
        self._lengths = sorted({len(k) for k in self._by_prefix})
        self._seen: dict[str, tuple[int, int, Match] | None] = {}

    def match(self, name: str) -> tuple[int, int, Match] | None:
        """(rule index, pattern index, match) of the first rule that matches `name`, as `match_rule`."""
        if name in self._seen:
            return self._seen[name]
        candidates = list(self._exact.get(name, ()))
        for n in self._lengths:
            if n > len(name):
                break
            candidates += self._by_prefix.get(name[:n], ())
        found = None
        for i, j in sorted(candidates):
            rule = self.rules[i]
            m = fullmatch((rule.patterns or (rule.pattern,))[j], name, f"{rule.where}.from")
            if m:
                found = (i, j, m)
                break
        self._seen[name] = found
        return found

    def rename(self, name: str) -> str:
        """The target name the first matching rule gives `name` (itself when none matches)."""
        hit = self.match(name)
        if hit is None:
            return name
        i, _, m = hit
        return self.rules[i].expand(self.rules[i].to, m, name)


def prefix_hint(rule: Rule, source: Iterable[str], prefix: PrefixChoice) -> str:
    """For a rule whose `from` matched no source name: when it matches a name as stored, with the prefix that the
    prefix step strips still on (copied from the checkpoint), say that the step runs before the rules and how
    `from` reads without the prefix. '' when that is not why."""
    view = prefix.rule_view()
    if not view:
        return ""
    for p in rule.patterns or (rule.pattern,):
        for name in source:
            short = prefix.apply(name)
            if short == name or not fullmatch(p, name, f"{rule.where}.from"):
                continue
            fixed = _without_prefix(p.pattern, prefix, short)
            write = f"from: '{fixed}'" if fixed is not None else f"'from' as rules see the names ({short!r})"
            return (f" The prefix step runs before the rules ({prefix.describe()}): 'from' matches {name!r} only "
                    f"as stored, and rules see it {view}, as {short!r}; write {write}.")
    return ""


def _without_prefix(pattern: str, prefix: PrefixChoice, short: str) -> str | None:
    """`pattern` with the stored prefix at its start replaced as the prefix step replaces it, if it then matches."""
    for written in dict.fromkeys((re.escape(prefix.stripped), prefix.stripped, prefix.stripped.replace(".", r"\."))):
        for start in ("^", ""):
            if written and pattern.startswith(start + written):
                fixed = start + re.escape(prefix.add) + pattern[len(start + written):]
                try:
                    if fullmatch(compile_pattern(fixed), short, "mapping.rules"):
                        return fixed
                except (PatternError, UserError):
                    return None
    return None


def apply_rules(name: str, rules: Sequence[Rule]) -> tuple[str, int | None]:
    """The target name for `name` (first rule that matches wins) and that rule's index."""
    hit = match_rule(name, rules)
    if hit is None:
        return name, None
    i, _, m = hit
    return rules[i].expand(rules[i].to, m, name), i


# --- grouping: which source tensors make which targets ----------------------------------------------

@dataclass(frozen=True)
class Output:
    """One target that a rule makes: its sources (in op order) and, for split, which part it is."""

    sources: tuple[str, ...]
    target: str
    part: int = 0


def group_outputs(rule: Rule, claims: Sequence[tuple[str, str, int, Match]]) -> list[Output]:
    """The targets `rule` writes from the source tensors it matched: (stored name, stripped name, pattern, match)."""
    if rule.op == "split":
        return [Output((name,), rule.expand(t, m, short), k)
                for name, short, _, m in claims for k, t in enumerate(rule.targets)]
    if rule.op != "concat":
        return [Output((name,), rule.expand(rule.to, m, short)) for name, short, _, m in claims]
    groups: dict[tuple, dict[int, tuple[str, str, Match]]] = {}
    for name, short, j, m in claims:
        parts = groups.setdefault(m.groups(), {})
        if j in parts:
            raise UserError(f"{rule.where}.from[{j}]: {parts[j][0]!r} and {name!r} both match "
                            f"{rule.patterns[j].pattern!r} with the same groups {m.groups()}; capture what "
                            "tells them apart (e.g. the layer index) in every pattern.")
        parts[j] = (name, short, m)
    outputs = []
    for key, parts in groups.items():
        absent = [j for j in range(len(rule.patterns)) if j not in parts]
        if absent:
            have = ", ".join(f"{parts[j][0]} (from[{j}])" for j in sorted(parts))
            groups_txt = ", ".join(f"\\{k + 1}={g!r}" for k, g in enumerate(key)) or "no groups"
            raise UserError(f"{rule.where}: concat group {groups_txt} has no source tensor for "
                            + ", ".join(f"from[{j}] {rule.patterns[j].pattern!r}" for j in absent)
                            + f" (found {have}). Every target needs one tensor per pattern; check the "
                            "checkpoint has it, or narrow the patterns.")
        _, first_short, first_m = parts[0]
        outputs.append(Output(tuple(parts[j][0] for j in range(len(rule.patterns))),
                              rule.expand(rule.to, first_m, first_short)))
    return outputs
