"""Which prefix to strip from source names (and which to add) so that they meet the target's names.

Checkpoints wrap names: `module.` (DDP), `_orig_mod.` (torch.compile), `model.`/`net.` (Lightning),
`ema.`, `backbone.` ... and the target may nest the same layers one level deeper (`backbone.`)
or under another name (`encoder.` in the source, `backbone.` in the target). A `PrefixChoice`
says both halves: strip `strip` from every source name that starts with it, then put `add` in
front. `detect` picks the choice that gives the most name+shape matches with the target.

Pure: names and shapes only (no torch), like mapping.py.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UserError

MAX_STRIP = 4  # leading name components a detected strip may have ('model.module._orig_mod.')
MAX_ADD = 3  # leading components a detected target-side prefix may have
EXACT = 24  # candidates scored exactly when rename rules are given (the rest by the index)


@dataclass(frozen=True)
class PrefixChoice:
    strip: tuple[str, ...] = ()  # stripped in order from each source name that starts with them
    add: str = ""  # then put in front of every name that had `strip` (every name when `strip` is empty)
    hits: int = 0  # source names that then match a target name with the same shape

    @property
    def stripped(self) -> str:
        return "".join(self.strip)

    def apply(self, name: str) -> str:
        out, hit = name, not self.strip
        for p in self.strip:
            if p and out.startswith(p):
                out, hit = out[len(p):], True
        return self.add + out if hit else out

    def describe(self) -> str:
        """The one wording of a prefix step, in the plan and in messages."""
        if self.stripped and self.add:
            return f"prefix swap {self.stripped!r} -> {self.add!r} (source names -> target names)"
        if self.add:
            return f"added prefix {self.add!r} (in front of every source name)"
        return f"stripped prefix {self.stripped!r}" if self.stripped else "no prefix"

    def rule_view(self) -> str:
        """How source names read to `mapping.rules` after this step (they match the names it made), for the load
        table and messages; '' when the step changes no name."""
        if self.stripped and self.add:
            return f"after the prefix swap {self.stripped!r} -> {self.add!r}"
        if self.add:
            return f"with the added prefix {self.add!r}"
        return f"without the stripped prefix {self.stripped!r}" if self.stripped else ""


def _heads(name: str, most: int) -> list[tuple[str, str]]:
    """(prefix, rest) for the first 1..most dotted components of `name` (rest never empty)."""
    parts = name.split(".")
    return [(".".join(parts[:k]) + ".", ".".join(parts[k:])) for k in range(1, min(most, len(parts) - 1) + 1)]


def _shape(meta: Any) -> tuple[int, ...]:
    return tuple(meta.shape)


def count_hits(source: Mapping[str, Any], target: Mapping[str, Any], choice: PrefixChoice,
               rename: Callable[[str], str] | None = None) -> int:
    """Source names that land on a target name with the same shape after `choice` (and `rename`)."""
    hits = 0
    for name, meta in source.items():
        new = choice.apply(name)
        t = target.get(rename(new) if rename else new)
        hits += t is not None and _shape(t) == _shape(meta)
    return hits


def _index_scores(source: Mapping[str, Any], target: Mapping[str, Any]) -> tuple[int, dict, dict]:
    """Exact hit counts of every (strip, add) candidate without rename rules, from a suffix index.

    A source name `p + r` lands on target `q + r`: index the target by every `r` it ends with,
    then each source name votes for the (p, q) pairs that make it match. Returns the identity's
    hits, {(p, q): hits among names starting with p}, and {p: identity hits among names starting with p}.
    """
    by_rest: dict[str, list[tuple[str, tuple[int, ...]]]] = defaultdict(list)  # rest -> (q, shape), q != ''
    for t, meta in target.items():
        for q, rest in _heads(t, MAX_ADD):
            by_rest[rest].append((q, _shape(meta)))
    base, gain, base_under = 0, Counter(), Counter()
    for name, meta in source.items():
        shape = _shape(meta)
        t = target.get(name)
        hit = t is not None and _shape(t) == shape
        base += hit
        base_under[""] += hit
        for p, rest in [("", name), *_heads(name, MAX_STRIP)]:
            if p:
                base_under[p] += hit
                t = target.get(rest)
                gain[(p, "")] += t is not None and _shape(t) == shape
                if "." not in rest:  # a swap re-roots a module, never renames a single tensor
                    continue
            for q, tshape in by_rest.get(rest, ()):
                if tshape == shape and q != p:
                    gain[(p, q)] += 1
    return base, gain, base_under


def _better(a: tuple[int, str, str], b: tuple[int, str, str] | None) -> bool:
    """More hits; on a tie the shorter change; then a plain strip over a swap."""
    if b is None:
        return True
    return (a[0], -(len(a[1]) + len(a[2])), a[2] == "") > (b[0], -(len(b[1]) + len(b[2])), b[2] == "")


def detect(source: Mapping[str, Any], target: Mapping[str, Any],
           rename: Callable[[str], str] | None = None) -> PrefixChoice:
    """The strip/add pair that maximises name+shape matches (nothing when nothing helps).

    A plain strip is taken when it adds any match. A swap or an added prefix is taken only
    when it makes more than half of the source names match: it re-roots the whole checkpoint,
    and a smaller overlap is more often two different modules that happen to agree in shape.
    Rename rules (`rename`) run after the prefix step and are counted when given.
    """
    if not source or not target:
        return PrefixChoice()
    base, gain, base_under = _index_scores(source, target)
    n = len(source)
    if rename is None:
        best: tuple[int, str, str] | None = None
        for (p, q), g in gain.items():
            if q and 2 * g <= n:
                continue
            score = base - base_under[p] + g
            if score > base and _better((score, p, q), best):
                best = (score, p, q)
        return PrefixChoice((best[1],) if best[1] else (), best[2], best[0]) if best else PrefixChoice(hits=base)

    # rules rename after the prefix step, so count exactly; candidates: the pairs the index likes
    # best and the strips that cover the most names (wrapper prefixes cover nearly everything)
    cover = Counter(p for name in source for p, _ in _heads(name, MAX_STRIP))
    pairs = {pq for pq, _ in heapq.nlargest(EXACT, gain.items(), key=lambda kv: kv[1])}
    pairs |= {(p, "") for p, _ in cover.most_common(EXACT)}
    base = count_hits(source, target, PrefixChoice(), rename)
    best = None
    for p, q in sorted(pairs):
        choice = PrefixChoice((p,) if p else (), q)
        score = count_hits(source, target, choice, rename)
        if q and 2 * count_hits({k: v for k, v in source.items() if k.startswith(p)}, target, choice, rename) <= n:
            continue
        if score > base and _better((score, p, q), best):
            best = (score, p, q)
    return PrefixChoice((best[1],) if best[1] else (), best[2], best[0]) if best else PrefixChoice(hits=base)


def choose_prefixes(source: Mapping[str, Any], target: Mapping[str, Any], strip: Sequence[str] | None = None,
                    add: str | None = None, rename: Callable[[str], str] | None = None) -> PrefixChoice:
    """`source.strip_prefixes` / `source.add_prefix` when set (checked), else `detect`."""
    if strip is None and add is None:
        return detect(source, target, rename)
    strip = tuple(strip or ())
    for p in strip:
        if not any(n.startswith(p) for n in source):
            raise UserError(f"source.strip_prefixes: no source name starts with {p!r} "
                            f"(first names: {', '.join(list(source)[:5])}).")
    if add and not any(t.startswith(add) for t in target):
        raise UserError(f"source.add_prefix: no target name starts with {add!r} "
                        f"(first target names: {', '.join(list(target)[:5])}).")
    choice = PrefixChoice(strip, add or "")
    return PrefixChoice(strip, add or "", count_hits(source, target, choice, rename))


def match_count(source: Mapping[str, Any], target: Mapping[str, Any]) -> int:
    """How well a candidate state dict fits the target: matches after the best prefix choice."""
    return detect(source, target).hits


def _fmt_shape(meta: Any) -> str:
    return "(" + ", ".join(map(str, _shape(meta))) + ")"


def side_by_side(source: Mapping[str, Any], target: Mapping[str, Any], n: int = 5) -> str:
    """The first `n` source and target names with their shapes, in two columns."""
    left = [f"{k} {_fmt_shape(v)}" for k, v in list(source.items())[:n]]
    right = [f"{k} {_fmt_shape(v)}" for k, v in list(target.items())[:n]]
    head = (f"source ({len(source)} tensors)", f"target ({len(target)} tensors)")
    width = max(len(s) for s in [head[0], *left])
    rows = [head, ("-" * len(head[0]), "-" * len(head[1]))]
    rows += [(left[i] if i < len(left) else "", right[i] if i < len(right) else "") for i in range(max(len(left), len(right)))]
    return "\n".join(f"  {a.ljust(width)}   {b}".rstrip() for a, b in rows)


def nothing_loaded_error(source: Mapping[str, Any], target: Mapping[str, Any], prefix: PrefixChoice = PrefixChoice(),
                         mismatched: int = 0) -> UserError:
    """The message for a source that loads nothing into the target (the `strict=False` trap)."""
    step = prefix.describe()
    if mismatched:
        why = (f"{mismatched} name(s) matched but every one has another shape in the target "
               "(mapping.on_mismatch=skip skipped them)")
    else:
        why = f"no source name matches a target name with the same shape ({step} after prefix detection)"
    shapes = Counter(_shape(m) for m in target.values())
    same_shapes = sum(1 for m in source.values() if shapes[_shape(m)])
    # pairing by shape is only safe when a person checks the pairs and pins the result: say all three together
    auto = (f" If the layers are the same in another naming ({same_shapes} source tensors have a shape the target "
            "has), mapping.auto=shape_order pairs them by module order: check every pair with mode=plan first and "
            "pin the result with mapping.expect (missing: [...], min_loaded: ...), since same-shaped layers can pair "
            "wrongly.") if same_shapes and not mismatched else ""
    return UserError(
        f"The source loaded nothing into the target: {why}.\n{side_by_side(source, target)}\n"
        "Fix: point source.path at the right checkpoint (or source.key at the right nested dict), "
        "add mapping.rules renames like {from: 'features\\.(.*)', to: 'backbone.\\1'}, "
        f"or set source.strip_prefixes / source.add_prefix.{auto}")
