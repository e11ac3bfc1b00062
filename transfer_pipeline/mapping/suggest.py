"""Suggested `mapping.rules` for what names leave unmatched: from the module tree, not from shapes alone.

Pure (names, shapes, dtypes; no tensor data), in four steps:

1. The unmatched tensors of each side are grouped into their leaf modules (`features.3.conv.1`
   holds `weight`, `bias`, ...), in module order; a module's signature is the shapes and dtypes
   of its tensors in order.
2. Source and target leaf modules are aligned as sequences (as `diff` aligns lines): the most
   modules with equal signatures paired in order, ties broken by how alike their paths are
   (the same indices, the same last name, the same tensor names). A pair is kept only when every
   best alignment has it; modules that could pair several ways are listed as ambiguous, never
   guessed (two same-shaped blocks with one of them gone, fused layouts that only an op rule can
   express).
3. Within a pair of modules, tensors pair by name, or by order where the names differ.
4. The pairs are generalised into a few regex rules: names are cut into fields, numbers that
   every pair of a group copies become capture groups (one rule for blocks 2-17, not sixteen),
   numbers that differ stay literal, exceptions go before the general rule (first match wins), and
   the rules are checked by planning with them: they must load exactly the pairs, and change
   nothing that already loaded. A rule that takes more is narrowed to the values it was made from.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..schema import MappingConfig, SourceConfig
from ..tensor_meta import TensorMeta

NUMBER = re.compile(r"\d+")
MAX_CELLS = 4_000_000  # leaf modules source x target beyond which the alignment is not tried (seconds of Python)


@dataclass
class Suggestion:
    rules: list[dict[str, str]]  # {from, to}: to append to mapping.rules
    pairs: dict[str, str]  # source name (after the prefix step) -> target name
    ambiguous: list[str] = field(default_factory=list)  # lines: modules that could pair several ways
    loaded: int = 0  # target tensors the rules would add to the load
    elements: int = 0
    missing: list[str] = field(default_factory=list)  # target tensors still unloaded with the rules
    notes: list[str] = field(default_factory=list)

    def yaml(self) -> str:
        """The rules as a YAML block to paste under an experiment's `mapping:` (strings single-quoted)."""
        lines = ["mapping:", "  rules:"] if self.rules else ["mapping:", "  rules: []"]
        for r in self.rules:
            lines.append(f"    - from: {_quote(r['from'])}")
            lines.append(f"      to: {_quote(r['to'])}")
        return "\n".join(lines) + "\n"

    def describe(self) -> str:
        head = (f"Suggested mapping.rules ({len(self.rules)}): would load {self.loaded} more tensor(s), "
                f"{self.elements:,} elements; {len(self.missing)} target tensor(s) would stay unloaded"
                + (f" (e.g. {', '.join(self.missing[:4])})" if self.missing else ""))
        parts = [head, self.yaml().rstrip()]
        if self.ambiguous:
            parts.append("Ambiguous (not suggested; write a rule or mapping.exclude for them):\n"
                         + "\n".join(f"  {a}" for a in self.ambiguous))
        parts += self.notes
        return "\n".join(parts)


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


@dataclass(frozen=True)
class Leaf:
    module: str  # dotted module name ('' for tensors at the top level)
    names: tuple[str, ...]  # the tensors' own names under it, in order
    signature: tuple[tuple[tuple[int, ...], str], ...]  # (shape, dtype) of each, in order


def leaves(names: Sequence[str], meta: Mapping[str, TensorMeta]) -> list[Leaf]:
    """The leaf modules of `names`, in order of first appearance."""
    groups: dict[str, list[str]] = {}
    for n in names:
        module, _, own = n.rpartition(".")
        groups.setdefault(module, []).append(own)
    return [Leaf(m, tuple(own), tuple((meta[_join(m, o)].shape, meta[_join(m, o)].dtype) for o in own))
            for m, own in groups.items()]


def _join(module: str, own: str) -> str:
    return f"{module}.{own}" if module else own


def likeness(a: Leaf, b: Leaf) -> int:
    """0..99: how alike two module paths are (numbers in the same places, the last name, the tensor names)."""
    pa, pb = a.module.split("."), b.module.split(".")
    score = 30 if a.names == b.names else 0
    score += 20 if pa[-1] == pb[-1] else 0
    na, nb = NUMBER.findall(a.module), NUMBER.findall(b.module)
    score += 30 * sum(x == y for x, y in zip(na, nb)) // max(len(na), len(nb), 1)
    score += 19 if len(pa) == len(pb) else 0
    return score


def align(src: Sequence[Leaf], tgt: Sequence[Leaf]) -> tuple[list[tuple[int, int]], list[tuple[int, list[int]]]]:
    """(pairs every best alignment makes, [(source index, its possible target indices)] for the ambiguous)."""
    n, m = len(src), len(tgt)
    neg = float("-inf")

    def score(i: int, j: int) -> float:
        return 1000 + likeness(src[i], tgt[j]) if src[i].signature == tgt[j].signature else neg

    s = [[score(i, j) for j in range(m)] for i in range(n)]
    f = [[0.0] * (m + 1) for _ in range(n + 1)]  # best of src[:i], tgt[:j]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            f[i][j] = max(f[i - 1][j], f[i][j - 1], f[i - 1][j - 1] + s[i - 1][j - 1])
    g = [[0.0] * (m + 1) for _ in range(n + 1)]  # best of src[i:], tgt[j:]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            g[i][j] = max(g[i + 1][j], g[i][j + 1], g[i + 1][j + 1] + s[i][j])
    best = g[0][0]
    pairs, ambiguous = [], []
    for i in range(n):
        partners = [j for j in range(m) if s[i][j] != neg and f[i][j] + s[i][j] + g[i + 1][j + 1] == best]
        if not partners:
            continue
        skippable = any(f[i][j] + g[i + 1][j] == best for j in range(m + 1))
        if len(partners) == 1 and not skippable:
            pairs.append((i, partners[0]))
        else:
            ambiguous.append((i, partners))
    return pairs, ambiguous


def tensor_pairs(a: Leaf, b: Leaf) -> list[tuple[str, str]]:
    """Own names of `a` -> own names of `b`: by name when both have the same names, else by order."""
    if sorted(a.names) == sorted(b.names):
        return [(x, x) for x in a.names]
    return list(zip(a.names, b.names))


# --- generalising pairs into rules --------------------------------------------------------------------

def _skeleton(name: str) -> tuple[str, list[str]]:
    return NUMBER.sub("#", name), NUMBER.findall(name)


def generalise(pairs: Mapping[str, str]) -> list[tuple[dict[str, str], list[list[str]]]]:
    """Few regex rules that map every source name of `pairs` to its target (first match wins), each with
    the values its number captures were made from."""
    groups: dict[tuple[str, str, bool], list[tuple[list[str], list[str]]]] = {}
    for s, t in pairs.items():
        same_tail = "." in s and "." in t and s.rpartition(".")[2] == t.rpartition(".")[2]
        if same_tail:  # weight -> weight: one rule for every tensor of the module, `(\w+)` keeps the name
            s, t = s.rpartition(".")[0], t.rpartition(".")[0]
        (ss, sn), (ts, tn) = _skeleton(s), _skeleton(t)
        groups.setdefault((ss, ts, same_tail), []).append((sn, tn))
    rules = [r for (ss, ts, tail), members in groups.items() for r in _rules_for(ss, ts, members, tail)]
    rules.sort(key=lambda r: r[0])  # the most literal first: exceptions before the general rule (stable)
    seen: set[tuple[str, str]] = set()
    out = []
    for _, rule, values in rules:
        if (rule["from"], rule["to"]) not in seen:
            seen.add((rule["from"], rule["to"]))
            out.append((rule, values))
    return out


def _copied(members: Sequence[tuple[list[str], list[str]]], k_src: int, k_tgt: int) -> dict[int, int]:
    """Source number position -> the target position that always equals it, where the number varies."""
    copied: dict[int, int] = {}
    for p in range(k_src):
        if len({sn[p] for sn, _ in members}) < 2:
            continue  # constant: a literal says more than a capture
        for q in range(k_tgt):
            if q not in copied.values() and all(sn[p] == tn[q] for sn, tn in members):
                copied[p] = q
                break
    return copied


def _rules_for(ss: str, ts: str, members: list[tuple[list[str], list[str]]],
               tail: bool) -> list[tuple[int, dict[str, str], list[list[str]]]]:
    """The rules of one skeleton group: (captures, rule, the values each capture was made from).

    A number every member copies (and that varies) becomes a capture group; numbers not copied
    stay literal, one rule per combination of their values, whose own captures are then decided
    among its members alone (a block that differs from the rest gets a rule with its literal index).
    """
    k_src, k_tgt = ss.count("#"), ts.count("#")
    copied = _copied(members, k_src, k_tgt)
    split: dict[tuple[str, ...], list[tuple[list[str], list[str]]]] = {}
    for sn, tn in members:
        key = tuple(v for p, v in enumerate(sn) if p not in copied) + ("|",) + \
            tuple(v for q, v in enumerate(tn) if q not in copied.values())
        split.setdefault(key, []).append((sn, tn))
    out = []
    for sub in split.values():
        own = _copied(sub, k_src, k_tgt)
        sn, tn = sub[0]
        group, where, src_parts, values = 0, {}, [], []
        for p, v in enumerate(sn):
            if p in own:
                group += 1
                where[own[p]] = group
                src_parts.append(r"(\d+)")
                values.append(sorted({m[0][p] for m in sub}, key=int))
            else:
                src_parts.append(v)
        tgt_parts = [_ref(where[q]) if q in where else v for q, v in enumerate(tn)]
        frm, to = _fill(ss, src_parts, escape=True), _fill(ts, tgt_parts, escape=False)
        if tail:
            group += 1
            frm, to = frm + r"\.(\w+)", to + "." + _ref(group)
        out.append((group, {"from": frm, "to": to}, values))
    return out


def _narrow(rule: dict[str, str], values: list[list[str]]) -> dict[str, str]:
    r"""The rule with each number capture limited to the values it was made from: `(2|3|4)` for `(\d+)`."""
    frm = rule["from"]
    for vs in values:
        frm = frm.replace(r"(\d+)", "(" + "|".join(vs) + ")", 1)
    return {"from": frm, "to": rule["to"]}


def _ref(group: int) -> str:
    return f"\\{group}" if group < 10 else f"\\g<{group}>"


def _fill(skeleton: str, parts: list[str], escape: bool) -> str:
    pieces = skeleton.split("#")
    out = []
    for i, piece in enumerate(pieces):
        out.append(re.escape(piece) if escape else piece)
        if i < len(parts):
            out.append(parts[i])
    return "".join(out)


# --- the whole suggestion -----------------------------------------------------------------------------

def suggest_rules(source: Mapping[str, TensorMeta], target: Mapping[str, TensorMeta], plan: Any,
                  mapping: MappingConfig, prefixes: SourceConfig, info: Any = None) -> Suggestion:
    """Rules for what `plan` (made with `mapping`) leaves unmatched, checked by planning with them."""
    from .plan import plan_load, prefix_choice
    from .rules import parse_rules

    prefix = prefix_choice(source, target, parse_rules(mapping.rules), prefixes)
    unmatched = list(plan.unexpected) + [m["source"] for m in plan.mismatched]  # a same name of another shape too
    wanted, excluded = set(unmatched), set(plan.excluded)  # sets made once: 100,000 names stay linear
    short = {prefix.apply(n): n for n in source if n in wanted}
    src_meta = {k: source[v] for k, v in short.items()}
    free = [t for t in plan.missing if t not in excluded]  # kept buffers too: they can be loaded
    src_leaves, tgt_leaves = leaves(list(short), src_meta), leaves(free, target)
    if len(src_leaves) * len(tgt_leaves) > MAX_CELLS:
        return Suggestion([], {}, notes=[f"mapping.suggest: {len(src_leaves)} x {len(tgt_leaves)} unmatched modules "
                                         "are too many to align; write rules for a part, then ask again."])
    matched, unsure = align(src_leaves, tgt_leaves)
    pairs: dict[str, str] = {}
    for i, j in matched:
        a, b = src_leaves[i], tgt_leaves[j]
        for x, y in tensor_pairs(a, b):
            pairs[_join(a.module, x)] = _join(b.module, y)
    ambiguous = [f"source {src_leaves[i].module or '(top level)'} {_sig(src_leaves[i])} could be target "
                 + " or ".join(tgt_leaves[j].module for j in js[:4]) + (" ..." if len(js) > 4 else "")
                 + (" (or nothing)" if len(js) == 1 else "") for i, js in unsure]
    rules = _checked(generalise(pairs), pairs, source, target, plan, mapping, prefixes, info) if pairs else []
    with_rules = plan_load(source, target, replace(mapping, rules=list(mapping.rules) + rules), prefixes, info)
    before = {e.target for e in plan.entries}
    added = [e for e in with_rules.entries if e.target not in before]
    return Suggestion(rules, pairs, ambiguous, len(added), sum(target[e.target].numel for e in added),
                      list(with_rules.missing))


def _sig(leaf: Leaf) -> str:
    return "[" + ", ".join(f"{n} {tuple(s)}" for n, (s, _) in zip(leaf.names, leaf.signature)) + "]"


def _checked(made: list[tuple[dict[str, str], list[list[str]]]], pairs: Mapping[str, str], source, target, plan,
             mapping, prefixes, info) -> list[dict[str, str]]:
    """The rules as made, else narrowed to their values, else one literal rule per tensor: the first of
    these that, planned with, loads exactly the pairs and changes nothing that loaded before."""
    from ..errors import UserError
    from .plan import plan_load

    want = set(pairs.values())
    before = {e.target: e.sources for e in plan.entries}
    mismatched_before = {m["target"] for m in plan.mismatched}

    def right(candidate: list[dict[str, str]]) -> bool:
        try:
            p = plan_load(source, target, replace(mapping, rules=list(mapping.rules) + candidate,
                                                   on_mismatch=type(mapping.on_mismatch)("skip")), prefixes, info)
        except UserError:
            return False
        got = {e.target: e.sources for e in p.entries}
        return ({m["target"] for m in p.mismatched} <= mismatched_before - want
                and all(got.get(t) == s for t, s in before.items()) and {t for t in got if t not in before} == want)

    general = [r for r, _ in made]
    narrowed = [_narrow(r, v) for r, v in made]
    literal = [{"from": re.escape(s), "to": t.replace("\\", "\\\\")} for s, t in pairs.items()]
    for candidate in (general, narrowed, literal):
        if candidate and right(candidate):
            return candidate
    return []


def read_rules_file(path: Any) -> list[dict[str, Any]]:
    """The rules of a YAML file: `mapping: {rules: [...]}` (as suggested_rules.yaml has them) or a plain list."""
    from ..errors import UserError
    from ..files import read_yaml

    node = read_yaml(Path(path), "mapping.rules_file")  # a FIFO, a huge file, YAML aliases: refused with a message
    if isinstance(node, dict):
        node = (node.get("mapping") or {}).get("rules") if isinstance(node.get("mapping"), dict) else node.get("rules")
    if not isinstance(node, list) or not all(isinstance(r, dict) for r in node):
        raise UserError(f"mapping.rules_file: {path} holds no list of rules (expected `mapping: {{rules: [{{from: ..., "
                        "to: ...}}]}}` or a list of {from, to}).")
    return node
