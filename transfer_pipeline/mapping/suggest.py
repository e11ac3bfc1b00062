r"""Suggested `mapping.rules` for what names leave unmatched: from the module tree, not from shapes alone.

Pure (names, shapes, dtypes; no tensor data), in five steps:

1. The unmatched tensors of each side are grouped into their leaf modules (`features.3.conv.1`
   holds `weight`, `bias`, ...), in module order; a recurrent module (nn.LSTM's `weight_ih_l1`,
   `..._l1_reverse`) is one leaf per layer and direction (suggest_units.py). A leaf's signature
   is the shapes and dtypes of its tensors in order.
2. Source and target leaves are aligned as sequences (as `diff` aligns lines): the most leaves
   with equal signatures paired in order, ties broken by how alike their paths are (the same
   indices, the same last name, the same tensor names). A pair is kept only when every best
   alignment has it and its target is not in another source block's place; leaves that could
   pair several ways are listed as ambiguous, never guessed (one of three same-shaped blocks gone).
3. What the alignment left is looked at again inside its block, where the order of leaves may
   differ (suggest_blocks.py): a fused target leaf stacking k same-shaped source leaves (q, k, v
   -> `in_proj_weight`) becomes an op hint (a concat rule, checked by planning, printed, not added);
   a signature held once on each side of the block pairs; the rest is listed as ambiguous, and
   a source leaf with no target of its signature anywhere as unpaired: nothing is dropped silently.
4. Within a pair of leaves, tensors pair by name (without a unit's suffix), or by order.
5. The pairs are generalised into a few regex rules: names are cut into fields, numbers that
   every pair of a group copies become capture groups (one rule for blocks 2-17, not sixteen;
   `lstm\.(\w+)_l(\d+)` -> `cells.\2.\1` for every layer), numbers that differ stay literal,
   exceptions go before the general rule (first match wins), and the rules are checked by planning
   with them: they must load exactly the pairs, and change nothing that already loaded. A rule that
   takes more is narrowed to the values it was made from.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..schema import MappingConfig, SourceConfig
from ..tensor_meta import TensorMeta
from .suggest_blocks import concat_candidates, second_pass, stacks
from .suggest_units import unit_tail, units

NUMBER = re.compile(r"\d+")
BASE = "\x00"  # in a skeleton: where a unit's tensor name goes (`(\w+)` in the rule)
MAX_CELLS = 4_000_000  # leaf modules source x target beyond which the alignment is not tried (seconds of Python)


@dataclass
class Suggestion:
    rules: list[dict[str, str]]  # {from, to}: to append to mapping.rules
    pairs: dict[str, str]  # source name (after the prefix step) -> target name
    ambiguous: list[str] = field(default_factory=list)  # lines: modules that could pair several ways
    loaded: int = 0  # target tensors the rules would add to the load
    elements: int = 0
    missing: list[str] = field(default_factory=list)  # target tensors still unloaded with the rules
    notes: list[str] = field(default_factory=list)  # e.g. which op rule a fused layout needs
    op_rules: list[dict[str, Any]] = field(default_factory=list)  # checked by planning, printed, not in `rules`
    unpaired: list[str] = field(default_factory=list)  # lines: source modules with no target of their signature

    def yaml(self) -> str:
        """The rules as a YAML block to paste under an experiment's `mapping:` (strings single-quoted);
        op rules follow as comments (check the order of their parts, then uncomment)."""
        lines = ["mapping:", "  rules:"] if self.rules else ["mapping:", "  rules: []"]
        for r in self.rules:
            lines.append(f"    - from: {_quote(r['from'])}")
            lines.append(f"      to: {_quote(r['to'])}")
        if self.op_rules:
            lines.append("    # op rules (checked by planning, not added: the parts go in their modules' order; "
                         "check it, then uncomment):")
            lines += [f"    # - {op_rule_text(r)}" for r in self.op_rules]
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
        if self.unpaired:
            more = len(self.unpaired) - 10
            shown = self.unpaired[:10] + ([f"... and {more} more"] if more > 0 else [])
            parts.append(f"Unpaired ({len(self.unpaired)} source module(s), no target of their signature left; "
                         "unused unless a rule takes them):\n" + "\n".join(f"  {u}" for u in shown))
        return "\n".join(parts)


def op_rule_text(rule: Mapping[str, Any]) -> str:
    """One op rule as a YAML flow mapping: `{from: ['a', 'b'], to: 'c', op: concat, dim: 0}`."""
    frm = rule["from"]
    frm = "[" + ", ".join(_quote(p) for p in frm) + "]" if isinstance(frm, list) else _quote(frm)
    rest = "".join(f", {k}: {v}" for k, v in rule.items() if k not in ("from", "to"))
    return f"{{from: {frm}, to: {_quote(rule['to'])}{rest}}}"


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


@dataclass(frozen=True)
class Leaf:
    module: str  # dotted module name ('' for tensors at the top level)
    names: tuple[str, ...]  # the tensors' own names under it, in order (a unit's without their `_l1` suffix)
    signature: tuple[tuple[tuple[int, ...], str], ...]  # (shape, dtype) of each, in order
    unit: str = ""  # `l1_reverse`: one layer and direction of a recurrent module (suggest_units.py)
    own: tuple[str, ...] = ()  # a unit's tensors' own names (`weight_ih_l1_reverse`); () = `names`

    @property
    def tensors(self) -> tuple[str, ...]:
        return self.own or self.names

    @property
    def path(self) -> str:
        return f"{self.module}.{self.unit}" if self.unit else self.module

    @property
    def label(self) -> str:
        return (self.module or "(top level)") + (f" (*_{self.unit})" if self.unit else "")

    @property
    def last(self) -> str:
        return self.module.rpartition(".")[2] + "|" + self.unit


def leaves(names: Sequence[str], meta: Mapping[str, TensorMeta]) -> list[Leaf]:
    """The leaf modules of `names`, in order of first appearance; a recurrent module as one leaf per layer
    and direction."""
    groups: dict[str, list[str]] = {}
    for n in names:
        module, _, own = n.rpartition(".")
        groups.setdefault(module, []).append(own)
    return [Leaf(m, base, tuple((meta[_join(m, o)].shape, meta[_join(m, o)].dtype) for o in own), unit,
                 own if unit else ())
            for m, owns in groups.items() for unit, base, own in units(owns)]


def _join(module: str, own: str) -> str:
    return f"{module}.{own}" if module else own


def likeness(a: Leaf, b: Leaf) -> int:
    """0..99: how alike two module paths are (numbers in the same places, the last name, the tensor names)."""
    pa, pb = a.path.split("."), b.path.split(".")
    score = 30 if a.names == b.names else 0
    score += 20 if pa[-1] == pb[-1] else 0
    na, nb = NUMBER.findall(a.path), NUMBER.findall(b.path)
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
        own_b = dict(zip(b.names, b.tensors))
        return [(x, own_b[y]) for x, y in zip(a.tensors, a.names)]
    return list(zip(a.tensors, b.tensors))


# --- generalising pairs into rules --------------------------------------------------------------------

def _skeleton(name: str) -> tuple[str, list[str]]:
    return NUMBER.sub("#", name), NUMBER.findall(name)


def generalise(pairs: Mapping[str, str]) -> list[tuple[dict[str, str], list[list[str]]]]:
    """Few regex rules that map every source name of `pairs` to its target (first match wins), each with
    the values its number captures were made from."""
    groups: dict[tuple[str, str, bool], list[tuple[list[str], list[str]]]] = {}
    for s, t in pairs.items():
        unit = unit_tail(s, t)  # weight_ih_l1 -> weight_ih: `(\w+)` keeps the name, the layer is a number
        same_tail = not unit and "." in s and "." in t and s.rpartition(".")[2] == t.rpartition(".")[2]
        if unit:
            s, t = f"{unit[0]}.{BASE}{unit[1]}", f"{unit[2]}.{BASE}{unit[3]}"
        elif same_tail:  # weight -> weight: one rule for every tensor of the module, `(\w+)` keeps the name
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
    base = ss.split(BASE)[0].count("#") if BASE in ss else None  # numbers before a unit's `(\w+)`
    out = []
    for sub in split.values():
        own = _copied(sub, k_src, k_tgt)
        sn, tn = sub[0]
        group, where, src_parts, values, base_group = 0, {}, [], [], 0
        for p, v in enumerate(sn):
            if p == base:
                group += 1
                base_group = group
            if p in own:
                group += 1
                where[own[p]] = group
                src_parts.append(r"(\d+)")
                values.append(sorted({m[0][p] for m in sub}, key=int))
            else:
                src_parts.append(v)
        if base is not None and not base_group:
            group += 1
            base_group = group
        tgt_parts = [_ref(where[q]) if q in where else v for q, v in enumerate(tn)]
        frm, to = _fill(ss, src_parts, escape=True), _fill(ts, tgt_parts, escape=False)
        if base is not None:
            frm, to = frm.replace(BASE, r"(\w+)"), to.replace(BASE, _ref(base_group))
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
    blocks = second_pass(src_leaves, tgt_leaves, matched, unsure, _sig, likeness)
    pairs: dict[str, str] = {}
    for i, j in sorted([*(p for p in matched if p not in blocks.demoted), *blocks.pairs]):
        a, b = src_leaves[i], tgt_leaves[j]
        for x, y in tensor_pairs(a, b):
            pairs[_join(a.module, x)] = _join(b.module, y)
    lines = {i: f"source {src_leaves[i].label} {_sig(src_leaves[i])} could be target "
                + " or ".join(tgt_leaves[j].label for j in js[:4]) + (" ..." if len(js) > 4 else "")
                + (" (or nothing)" if len(js) == 1 else "") for i, js in unsure if i not in blocks.resolved}
    lines.update(blocks.ambiguous)
    ambiguous = [lines[i] for i in sorted(lines)] + blocks.fused_unsure
    want = {t: (short[s],) for s, t in pairs.items()}
    rules = _checked(_candidates(generalise(pairs), pairs), want, plan, source, target, mapping, prefixes, info) \
        if pairs else []
    with_rules = plan_load(source, target, replace(mapping, rules=list(mapping.rules) + rules), prefixes, info)
    before = {e.target for e in plan.entries}
    added = [e for e in with_rules.entries if e.target not in before]
    op_rules, notes = _op_rules(blocks, src_leaves, tgt_leaves, short, with_rules, source, target,
                                replace(mapping, rules=list(mapping.rules) + rules), prefixes, info)
    unpaired = [f"source {src_leaves[i].label} {_sig(src_leaves[i])}" for i in blocks.unpaired]
    return Suggestion(rules, pairs, ambiguous, len(added), sum(target[e.target].numel for e in added),
                      list(with_rules.missing), notes, op_rules, unpaired)


def _sig(leaf: Leaf) -> str:
    return "[" + ", ".join(f"{n} {tuple(s)}" for n, (s, _) in zip(leaf.tensors, leaf.signature)) + "]"


def _candidates(made: list[tuple[dict[str, str], list[list[str]]]], pairs: Mapping[str, str]) -> list[list[dict]]:
    """The rules as made, narrowed to their values, one literal rule per tensor: the most general first."""
    return [[r for r, _ in made], [_narrow(r, v) for r, v in made],
            [{"from": re.escape(s), "to": t.replace("\\", "\\\\")} for s, t in pairs.items()]]


def _op_rules(blocks, src_leaves, tgt_leaves, short, plan, source, target, mapping, prefixes,
              info) -> tuple[list[dict[str, Any]], list[str]]:
    """(concat rules for the fused layouts found, checked by planning after the suggested rules; notes)."""
    if not blocks.fused:
        return [], []
    want = {t: tuple(short[s] for s in srcs) for t, srcs in stacks(blocks.fused, src_leaves, tgt_leaves).items()}
    rules = _checked(concat_candidates(want), want, plan, source, target, mapping, prefixes, info)
    kinds: dict[tuple, list] = {}
    for f in blocks.fused:
        kinds.setdefault((tgt_leaves[f.target].last, tuple(src_leaves[i].last for i in f.sources)), []).append(f)
    notes = []
    for fs in kinds.values():
        t, parts = tgt_leaves[fs[0].target], [src_leaves[i] for i in fs[0].sources]
        notes.append(f"Op rule: target {t.label} {_sig(t)} = source {', '.join(p.label for p in parts)} stacked "
                     f"along dim 0" + (f" (and {len(fs) - 1} more like it)" if len(fs) > 1 else "")
                     + (": op: concat, rule above (commented out)" if rules else
                        ": op: concat (no rule written here passed the planning check; write it by hand)"))
    return rules, notes


def _checked(candidates: list[list[dict[str, Any]]], want: Mapping[str, tuple[str, ...]], plan, source, target,
             mapping, prefixes, info) -> list[dict[str, Any]]:
    """The first candidate rule list that, planned with after `mapping.rules`, loads exactly `want` (target ->
    its source tensors, as stored) besides what `plan` loaded, and changes nothing that loaded there."""
    from ..errors import UserError
    from .plan import plan_load

    before = {e.target: e.sources for e in plan.entries}
    mismatched_before = {m["target"] for m in plan.mismatched}

    def right(candidate: list[dict[str, Any]]) -> bool:
        try:
            p = plan_load(source, target, replace(mapping, rules=list(mapping.rules) + candidate,
                                                   on_mismatch=type(mapping.on_mismatch)("skip")), prefixes, info)
        except UserError:
            return False
        got = {e.target: e.sources for e in p.entries}
        return ({m["target"] for m in p.mismatched} <= mismatched_before - set(want)
                and all(got.get(t) == s for t, s in before.items())
                and {t: s for t, s in got.items() if t not in before} == want)

    for candidate in candidates:
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
