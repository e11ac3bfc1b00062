"""`mapping.rules`: parse them, match source names, and group what each rule takes into its targets.

A rule is `{from, to, op, optional}` plus the op's own keys. `rename` (the default) maps one
source name to one target name; the other ops (see OP_KEYS) also transform the tensor, and
op_shapes.py checks each op's shapes. This module parses the rules, matches source names and
groups the tensors a rule takes into the targets it writes. Pure: no torch, no tensor data;
errors name the rule (`mapping.rules[2].sizes`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from ..paths import resolve_path

# op -> the keys it takes besides from/to/op/optional (and their defaults, where one exists)
OP_KEYS: dict[str, dict[str, Any]] = {
    "rename": {},
    "concat": {"dim": 0},
    "split": {"dim": 0, "sizes": None},
    "transpose": {"dims": (0, 1)},
    "reshape": {"shape": None},
    "adapt_channels": {},
    "select": {"dim": 0, "indices": None, "label_map": None},
    "interpolate": {"dims": None, "mode": None, "grid": False, "prefix_tokens": 0, "align_corners": False},
}
RULE_OPS = tuple(OP_KEYS)
RULE_KEYS = {"from", "to", "op", "optional"} | {k for keys in OP_KEYS.values() for k in keys}
INTERPOLATE_MODES = {"nearest": (1, 2, 3), "area": (1, 2, 3), "linear": (1,), "bilinear": (2,),
                     "bicubic": (2,), "trilinear": (3,)}
DEFAULT_INTERPOLATE_MODE = {1: "linear", 2: "bicubic", 3: "trilinear"}


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern  # the first (for concat: of several) `from` regex
    to: str  # the first (for split: of several) `to` template
    optional: bool = False
    op: str = "rename"
    patterns: tuple[re.Pattern, ...] = ()  # every `from` regex (concat: one per part, in order)
    targets: tuple[str, ...] = ()  # every `to` template (split: one per part, in order)
    args: tuple[tuple[str, Any], ...] = ()  # the op's keys, checked, as sorted (key, value) pairs
    index: int = 0  # position in mapping.rules (for messages)

    @property
    def where(self) -> str:
        return f"mapping.rules[{self.index}]"

    def arg(self, key: str) -> Any:
        return dict(self.args).get(key, OP_KEYS[self.op].get(key))

    def match(self, name: str) -> tuple[int, re.Match] | None:
        """(which `from` pattern, its match) for the first pattern that matches all of `name`."""
        for j, p in enumerate(self.patterns or (self.pattern,)):
            m = p.fullmatch(name)
            if m:
                return j, m
        return None

    def expand(self, template: str, m: re.Match, name: str) -> str:
        try:
            return m.expand(template)
        except (re.error, IndexError) as e:
            raise UserError(f"{self.where}.to: {template!r} cannot be filled from {name!r}: {e}.") from None


# --- parsing -----------------------------------------------------------------------------------------

def _is_list(v: Any) -> bool:
    return isinstance(v, Sequence) and not isinstance(v, (str, bytes))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_list(v: Any, where: str, what: str, minimum: int | None = None) -> tuple[int, ...]:
    if not _is_list(v) or not all(_is_int(x) for x in v):
        raise UserError(f"{where}: expected a list of integers ({what}), got {v!r}.")
    if minimum is not None and any(x < minimum for x in v):
        raise UserError(f"{where}: every value must be >= {minimum} ({what}), got {list(v)}.")
    return tuple(v)


def _compile(p: Any, where: str) -> re.Pattern:
    if not isinstance(p, str):
        raise UserError(f"{where}: expected a regex string, got {p!r}.")
    try:
        return re.compile(p)
    except re.error as e:
        raise UserError(f"{where}: {p!r} is not a valid regex: {e}.") from None


def read_label_map(path: str, where: str) -> tuple[int, ...]:
    """Source row indices in target order: a JSON list, or text with one index per line (`#` comments).

    A text line may carry the class name after the index (`207 golden retriever`); only the index counts.
    """
    p = resolve_path(path, where)
    if not p.is_file():
        raise UserError(f"{where}: no such label-map file: {p.resolve()}.")
    text = p.read_text()
    try:
        if p.suffix == ".json":
            data = json.loads(text)
            return _int_list(data, where, f"a JSON list of source indices in {p}", minimum=0)
        rows = [ln.split("#", 1)[0].split() for ln in text.splitlines()]
        return tuple(int(r[0]) for r in rows if r)
    except (ValueError, json.JSONDecodeError) as e:
        raise UserError(f"{where}: {p} is not a label map ({e}); write one source index per line "
                        "(optionally followed by the class name), or a JSON list of indices.") from None


def _parse_args(op: str, r: Mapping[str, Any], where: str) -> tuple[tuple[str, Any], ...]:
    allowed = OP_KEYS[op]
    wrong = sorted(k for k in r if k not in {"from", "to", "op", "optional"} and k not in allowed)
    if wrong:
        takes = f"takes {sorted(allowed)}" if allowed else "takes no other keys"
        raise UserError(f"{where}: key(s) {wrong} do not apply to op {op!r}; {op} {takes}.")
    args: dict[str, Any] = {}
    for key in allowed:
        if key not in r or r[key] is None:
            continue
        v, w = r[key], f"{where}.{key}"
        if key in ("dim", "prefix_tokens"):
            if not _is_int(v) or (key == "prefix_tokens" and v < 0):
                raise UserError(f"{w}: expected {'an integer' if key == 'dim' else 'an integer >= 0'}, got {v!r}.")
        elif key == "sizes":
            v = _int_list(v, w, "the size of each part along `dim`", minimum=1)
        elif key == "indices":
            v = _int_list(v, w, "source rows to keep, in target order", minimum=0)
        elif key == "shape":
            v = _int_list(v, w, "the target shape; -1 once for 'the rest'", minimum=-1)
        elif key == "dims":
            v = _int_list(v, w, "the dims to swap" if op == "transpose" else "the dims to resize")
            if op == "transpose" and len(v) != 2:
                raise UserError(f"{w}: transpose swaps two dims, e.g. dims: [0, 1]; got {list(v)}.")
        elif key == "mode":
            if v not in INTERPOLATE_MODES:
                raise UserError(f"{w}: {v!r} is not an interpolation mode; choose one of {sorted(INTERPOLATE_MODES)}.")
        elif key in ("grid", "align_corners"):
            if not isinstance(v, bool):
                raise UserError(f"{w}: expected true or false, got {v!r}.")
        elif key == "label_map":
            if "indices" in r and r["indices"] is not None:
                raise UserError(f"{where}: give either indices or label_map, not both.")
            v = read_label_map(str(v), w)
            key = "indices"
        args[key] = v
    if op == "select" and "indices" not in args:
        raise UserError(f"{where}: op select needs `indices: [source rows in target order]` or `label_map: <file>`.")
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
        if op not in RULE_OPS:
            raise UserError(f"{where}: op {op!r} is not supported; choose one of {list(RULE_OPS)}.")
        froms, tos = r["from"], r["to"]
        if op == "concat":
            if not _is_list(froms) or len(froms) < 2:
                raise UserError(f"{where}.from: op concat takes a list of two or more regexes, one per part in "
                                f"order (e.g. the q, k and v weights), got {froms!r}.")
        elif _is_list(froms):
            raise UserError(f"{where}.from: op {op} takes one regex; a list of regexes is for op concat.")
        if op == "split":
            if not _is_list(tos) or len(tos) < 2 or not all(isinstance(t, str) for t in tos):
                raise UserError(f"{where}.to: op split takes a list of two or more target templates, one per "
                                f"part in order, got {tos!r}.")
        elif not isinstance(tos, str):
            raise UserError(f"{where}.to: op {op} takes one target template; a list of templates is for op split.")
        froms = list(froms) if _is_list(froms) else [froms]
        tos = list(tos) if _is_list(tos) else [tos]
        patterns = tuple(_compile(p, f"{where}.from" + (f"[{j}]" if op == "concat" else ""))
                         for j, p in enumerate(froms))
        if len({p.groups for p in patterns}) > 1:
            raise UserError(f"{where}.from: the patterns capture {[p.groups for p in patterns]} groups; every "
                            "pattern of a concat rule must capture the same groups (the layer index ...), "
                            "which is how the parts of one target are found.")
        args = _parse_args(op, r, where)
        if op == "split" and dict(args).get("sizes") is not None and len(dict(args)["sizes"]) != len(tos):
            raise UserError(f"{where}.sizes: {list(dict(args)['sizes'])} has {len(dict(args)['sizes'])} sizes "
                            f"for {len(tos)} targets in `to`; give one size per target.")
        rules.append(Rule(patterns[0], tos[0], bool(r.get("optional", False)), op, patterns, tuple(tos), args, i))
    return rules


def match_rule(name: str, rules: Sequence[Rule]) -> tuple[int, int, re.Match] | None:
    """(rule index, pattern index, match) of the first rule that matches `name`."""
    for i, rule in enumerate(rules):
        hit = rule.match(name)
        if hit:
            return i, hit[0], hit[1]
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


def group_outputs(rule: Rule, claims: Sequence[tuple[str, str, int, re.Match]]) -> list[Output]:
    """The targets `rule` writes from the source tensors it matched: (stored name, stripped name, pattern, match)."""
    if rule.op == "split":
        return [Output((name,), rule.expand(t, m, short), k)
                for name, short, _, m in claims for k, t in enumerate(rule.targets)]
    if rule.op != "concat":
        return [Output((name,), rule.expand(rule.to, m, short)) for name, short, _, m in claims]
    groups: dict[tuple, dict[int, tuple[str, str, re.Match]]] = {}
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
