"""Second pass of mapping.suggest: the leaves the global alignment left, paired inside their block.

The global alignment pairs leaves in module order. Where a block keeps its leaves in another order
(ALBERT's attention LayerNorm sits between attention and FFN, nn.TransformerEncoderLayer's `norm1`
and `norm2` come after its linears), a leaf has no partner in any best alignment. Such a leaf, and
one the alignment left ambiguous, is looked at again in its block: its nearest source ancestor
that holds paired leaves gives the deepest target module that holds all their partners, and the
block is that module's free leaves against the pending source leaves it is the block of. There,
deepest target module first:

1. Fused layouts: a target leaf whose tensors are k (2, 3, 4) same-shaped source leaves stacked
   along dim 0 (q, k, v -> `in_proj_weight`) is one step of an ordered alignment of the block's
   leftovers; a step every best alignment makes becomes an op hint (`op: concat`), never a rename.
2. What is left pairs by signature alone (order is what failed here): a signature held by one
   source and one target leaf of the block pairs them (or the same last name among several);
   more than one on a side is listed as ambiguous, never guessed.
3. A source leaf with no target of its signature in the block is tried in the next block up,
   the whole model last; what is still unpaired is listed, so nothing is dropped silently.

Pure: names, shapes and dtypes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

FUSE = (2, 3, 4)  # how many same-shaped source leaves a fused target leaf may stack (k, v; q, k, v; LSTM gates)


@dataclass(frozen=True)
class Fused:
    target: int  # a target leaf index
    sources: tuple[int, ...]  # the source leaf indices it stacks along dim 0, in order


@dataclass
class Blocks:
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (source, target) leaf pairs made in blocks
    fused: list[Fused] = field(default_factory=list)
    ambiguous: dict[int, str] = field(default_factory=dict)  # source leaf -> its line (replaces the alignment's)
    resolved: set[int] = field(default_factory=set)  # source leaves whose alignment line no longer stands
    fused_unsure: list[str] = field(default_factory=list)  # fused layouts that could stack several ways
    unpaired: list[int] = field(default_factory=list)  # source leaves neither paired nor ambiguous
    demoted: set[tuple[int, int]] = field(default_factory=set)  # alignment pairs that cross into another block


def second_pass(src: Sequence[Any], tgt: Sequence[Any], matched: Sequence[tuple[int, int]],
                unsure: Sequence[tuple[int, list[int]]], sig: Any, likeness: Any) -> Blocks:
    """The leftovers of `align` (matched pairs, ambiguous sources) paired, fused or listed block by block.

    `sig(leaf)` prints a leaf's tensors; `likeness(a, b)` is suggest.likeness (names break ties).
    """
    out = Blocks()
    out.demoted = _crossing(src, tgt, matched)
    matched = [p for p in matched if p not in out.demoted]
    paired_t = {j for _, j in matched}
    anchors: dict[tuple[str, ...], tuple[str, ...]] = {}  # source ancestor -> target module of its partners
    for i, j in matched:
        c = _container(tgt[j])
        for a in _ancestors(src[i]):
            anchors[a] = _common(anchors[a], c) if a in anchors else c
    anchors[()] = ()  # the whole model, last
    pending = {i for i in range(len(src)) if i not in dict(matched)}
    free = {j for j in range(len(tgt)) if j not in paired_t}
    by_prefix: dict[tuple[str, ...], list[int]] = {}
    for j in sorted(free):
        parts = _parts(tgt[j])
        for d in range(len(parts) + 1):
            by_prefix.setdefault(parts[:d], []).append(j)
    levels: dict[tuple[str, ...], list[int]] = {}  # target module -> the pending sources whose block it is
    where: dict[tuple[str, ...], tuple[str, ...]] = {}  # target module -> the first source ancestor mapped to it
    for i in sorted(pending):
        for a in _ancestors(src[i]):
            if a in anchors and i not in levels.setdefault(anchors[a], []):
                levels[anchors[a]].append(i)
                where.setdefault(anchors[a], a)
    cands = dict(unsure)
    for t in sorted(levels, key=len, reverse=True):  # the deepest target module first (stable: source order)
        s_ids = [i for i in levels[t] if i in pending]
        t_ids = [j for j in by_prefix.get(t, []) if j in free]
        if s_ids and t_ids:
            _block(src, tgt, s_ids, t_ids, (where[t], t), pending, free, cands, out, sig, likeness)
    taken = paired_t | {j for _, j in out.pairs} | {f.target for f in out.fused}
    for i in sorted(pending):
        if i in cands and any(j not in taken for j in cands[i]):
            continue  # the alignment's line stands
        out.resolved.add(i)
        out.unpaired.append(i)
    return out


def _block(src: Sequence[Any], tgt: Sequence[Any], s_ids: list[int], t_ids: list[int], where: tuple, pending: set[int],
           free: set[int], cands: dict[int, list[int]], out: Blocks, sig: Any, likeness: Any) -> None:
    """Fused layouts, then pairs by signature, then the ambiguous, among one block's leftovers."""
    certain, unsure = _fusions(src, tgt, s_ids, t_ids, likeness)
    for f in certain:
        out.fused.append(f)
        pending.difference_update(f.sources)
        out.resolved.update(f.sources)
        free.discard(f.target)
    for j, runs in unsure:  # listed once: the target and its possible parts go no further
        out.fused_unsure.append(f"target {tgt[j].label} {sig(tgt[j])} could stack (op: concat) source "
                                + " or ".join(", ".join(src[i].label for i in run) for run in runs[:3]))
        free.discard(j)
        for run in runs:
            pending.difference_update(run)
            out.resolved.update(run)
    s_ids = [i for i in s_ids if i in pending]
    t_ids = [j for j in t_ids if j in free]
    groups: dict[Any, tuple[list[int], list[int]]] = {}
    for i in s_ids:
        groups.setdefault(src[i].signature, ([], []))[0].append(i)
    for j in t_ids:
        if tgt[j].signature in groups:
            groups[tgt[j].signature][1].append(j)
    for si, tj in groups.values():
        if not tj:
            continue  # nothing of its signature here: the next block up
        made = _same_last_name(src, tgt, si, tj) if len(si) > 1 or len(tj) > 1 else [(si[0], tj[0])]
        for i, j in made:
            out.pairs.append((i, j))
            pending.discard(i)
            out.resolved.add(i)
            free.discard(j)
        rest_s = [i for i in si if i in pending]
        rest_t = [j for j in tj if j in free]
        if not rest_s or not rest_t:
            continue
        for i in rest_s:
            pending.discard(i)
            if i in cands and all(_under(tgt[j], where[1]) for j in cands[i]):
                continue  # the alignment already says which; it stands
            out.resolved.add(i)
            names = " or ".join(tgt[j].label for j in rest_t[:4]) + (" ..." if len(rest_t) > 4 else "")
            out.ambiguous[i] = (f"source {src[i].label} {sig(src[i])} could be target {names} (in block "
                                f"{'.'.join(where[0]) or '(top level)'} -> {'.'.join(where[1]) or '(top level)'}, "
                                "where module order cannot say which)")
        free.difference_update(rest_t)


def _same_last_name(src: Sequence[Any], tgt: Sequence[Any], si: list[int], tj: list[int]) -> list[tuple[int, int]]:
    """Pairs of one signature decided by their last names: a name held once on each side."""
    ls: dict[str, list[int]] = {}
    lt: dict[str, list[int]] = {}
    for i in si:
        ls.setdefault(src[i].last, []).append(i)
    for j in tj:
        lt.setdefault(tgt[j].last, []).append(j)
    return [(a[0], lt[n][0]) for n, a in ls.items() if len(a) == 1 and len(lt.get(n, ())) == 1]


def _crossing(src: Sequence[Any], tgt: Sequence[Any], matched: Sequence[tuple[int, int]]) -> set[tuple[int, int]]:
    """Alignment pairs whose target lies in the block of another source module: block 1's norm, declared
    first, paired with block 0's norm, declared last (the alignment keeps module order, not blocks).

    A source module's block is the deepest target module holding more than half of its leaves' partners;
    a pair leaves its block when its target is outside it and inside the block of a sibling module.
    """
    total: dict[tuple[str, ...], int] = {}
    counts: dict[tuple[str, ...], dict[tuple[str, ...], int]] = {}
    for i, j in matched:
        c = _container(tgt[j])
        for a in _ancestors(src[i]):
            total[a] = total.get(a, 0) + 1
            cnt = counts.setdefault(a, {})
            for d in range(len(c) + 1):
                cnt[c[:d]] = cnt.get(c[:d], 0) + 1
    block = {a: max((p for p, n in cnt.items() if 2 * n > total[a]), key=len) for a, cnt in counts.items()}
    owners: dict[tuple, set[tuple[str, ...]]] = {}
    for a, t in block.items():
        if a:
            owners.setdefault((a[:-1], t), set()).add(a)
    out = set()
    for i, j in matched:
        a = next((a for a in _ancestors(src[i]) if a and total[a] >= 2), None)
        if a is None or _under(tgt[j], block[a]):
            continue
        c = _container(tgt[j])
        if any(owners.get((a[:-1], c[:d]), {a}) - {a} and block[a][:d] != c[:d] for d in range(len(c), 0, -1)):
            out.add((i, j))
    return out


# --- fused layouts: an ordered alignment of the block's leftovers with k-to-1 steps ------------------

def _part(signature, k: int):
    """The signature of one of k leaves that, stacked along dim 0, give `signature`; None if none can."""
    parts = []
    for shape, dtype in signature:
        if not shape or shape[0] % k:
            return None
        parts.append(((shape[0] // k, *shape[1:]), dtype))
    return tuple(parts)


def _fusions(src: Sequence[Any], tgt: Sequence[Any], s_ids: list[int], t_ids: list[int],
             likeness: Any) -> tuple[list[Fused], list[tuple[int, list]]]:
    """(fused steps every best alignment of the block makes, [(target, runs)] for those only some make).

    Scores are loaded elements (a plain pair of equal signatures, or a k-to-1 stack, one less, so a
    plain pair wins a tie), then likeness: the big tensors decide, names break ties.
    """
    n, m = len(s_ids), len(t_ids)
    have = {src[i].signature for i in s_ids}
    parts = [{k: p for k in FUSE if (p := _part(tgt[j].signature, k)) is not None and p in have} for j in t_ids]
    if not any(parts):
        return [], []
    weight = 100 * (min(n, m) + 1)  # above any sum of likeness
    size = [weight * sum(_numel(s) for s, _ in tgt[j].signature) for j in t_ids]
    sg = [src[i].signature for i in s_ids]
    run_end = [1] * n  # equal signatures ending at i
    for i in range(1, n):
        run_end[i] = run_end[i - 1] + 1 if sg[i] == sg[i - 1] else 1
    run_start = [1] * n
    for i in range(n - 2, -1, -1):
        run_start[i] = run_start[i + 1] + 1 if sg[i] == sg[i + 1] else 1
    neg = None

    def plain(i: int, j: int):
        return size[j] + likeness(src[s_ids[i]], tgt[t_ids[j]]) if sg[i] == tgt[t_ids[j]].signature else neg

    s = [[plain(i, j) for j in range(m)] for i in range(n)]
    f = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            best = max(f[i - 1][j], f[i][j - 1])
            if s[i - 1][j - 1] is not None:
                best = max(best, f[i - 1][j - 1] + s[i - 1][j - 1])
            for k, p in parts[j - 1].items():
                if run_end[i - 1] >= k and sg[i - 1] == p:
                    best = max(best, f[i - k][j - 1] + size[j - 1] - 1)
            f[i][j] = best
    g = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            best = max(g[i + 1][j], g[i][j + 1])
            if s[i][j] is not None:
                best = max(best, g[i + 1][j + 1] + s[i][j])
            for k, p in parts[j].items():
                if run_start[i] >= k and sg[i] == p:
                    best = max(best, g[i + k][j + 1] + size[j] - 1)
            g[i][j] = best
    total = g[0][0]
    steps = [(i, k, j) for j in range(m) for k, p in parts[j].items() for i in range(n - k + 1)
             if run_start[i] >= k and sg[i] == p and f[i][j] + size[j] - 1 + g[i + k][j + 1] == total]
    if not steps:
        return [], []
    options: dict[int, set] = {i: set() for i in range(n)}
    for st in steps:
        for i in range(st[0], st[0] + st[1]):
            options[i].add(st)
    for i in range(n):
        for j in range(m):
            if s[i][j] is not None and f[i][j] + s[i][j] + g[i + 1][j + 1] == total:
                options[i].add((i, 1, -1 - j))
    certain, unsure = [], {}
    for st in steps:
        members = range(st[0], st[0] + st[1])
        if all(options[i] == {st} and not any(f[i][j] + g[i + 1][j] == total for j in range(m + 1)) for i in members):
            certain.append(Fused(t_ids[st[2]], tuple(s_ids[i] for i in members)))
        else:
            unsure.setdefault(t_ids[st[2]], []).append(tuple(s_ids[i] for i in members))
    return certain, list(unsure.items())


def _numel(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


# --- the module tree ------------------------------------------------------------------------------

def _parts(leaf) -> tuple[str, ...]:
    return tuple(leaf.module.split(".")) if leaf.module else ()


def _container(leaf) -> tuple[str, ...]:
    """The module holding a leaf (a recurrent unit: its own module, which holds its other layers)."""
    parts = _parts(leaf)
    return parts if leaf.unit else parts[:-1]


def _ancestors(leaf) -> list[tuple[str, ...]]:
    c = _container(leaf)
    return [c[:d] for d in range(len(c), -1, -1)]


def _common(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    d = 0
    while d < min(len(a), len(b)) and a[d] == b[d]:
        d += 1
    return a[:d]


def _under(leaf, module: tuple[str, ...]) -> bool:
    return _parts(leaf)[:len(module)] == module


# --- op rules for fused layouts -------------------------------------------------------------------

def stacks(fused: Sequence[Fused], src: Sequence[Any], tgt: Sequence[Any]) -> dict[str, tuple[str, ...]]:
    """Target tensor -> its source tensors in stacking order (names after the prefix step)."""
    out = {}
    for f in fused:
        t = tgt[f.target]
        for x, own in enumerate(t.tensors):
            out[_join(t.module, own)] = tuple(_join(src[i].module, src[i].tensors[x]) for i in f.sources)
    return out


def concat_candidates(want: dict[str, tuple[str, ...]]) -> list[list[dict[str, Any]]]:
    """Concat rules for `want`, most general first: captures shared by every part (one rule for all blocks,
    `(weight|bias)` for the tensors of a module), the same per tensor name, then one literal rule per target."""
    import re

    from .suggest import generalise

    by_k: dict[int, dict[str, tuple[str, ...]]] = {}
    for t, srcs in want.items():
        by_k.setdefault(len(srcs), {})[t] = srcs
    general: list[dict[str, Any]] = []
    for k, group in by_k.items():
        made = [generalise({srcs[p]: t for t, srcs in group.items()}) for p in range(k)]
        shapes = {tuple((r["to"], r["from"].count("(")) for r, _ in m) for m in made}
        if len(shapes) != 1:
            general = []
            break
        general += [{"from": [m[q][0]["from"] for m in made], "to": made[0][q][0]["to"], "op": "concat", "dim": 0}
                    for q in range(len(made[0]))]
    literal = [{"from": [re.escape(s) for s in srcs], "to": t.replace("\\", "\\\\"), "op": "concat", "dim": 0}
               for t, srcs in want.items()]
    return [c for c in (_merged(general), general, literal) if c]


def _merged(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    r"""Rules that differ only in their tensor's own name (`q\.weight` -> `in_proj_weight`, `q\.bias` ->
    `in_proj_bias`) as one: `q\.(weight|bias)` -> `in_proj_\2`."""
    import re

    groups: dict[tuple, list[str]] = {}
    for r in rules:
        own = re.sub(r"\\(.)", r"\1", r["from"][0].rpartition(r"\.")[2])
        esc = r"\." + re.escape(own)
        if not own.isidentifier() or not r["to"].endswith(own) or not all(p.endswith(esc) for p in r["from"]):
            return []
        key = (tuple(p[:-len(esc)] for p in r["from"]), r["to"][:-len(own)])
        groups.setdefault(key, []).append(own)
    out = []
    for (froms, to), owns in groups.items():
        n = re.compile(froms[0]).groups + 1
        alt = "(" + "|".join(re.escape(o) for o in owns) + ")"
        out.append({"from": [f + r"\." + alt for f in froms], "to": to + (f"\\{n}" if n < 10 else f"\\g<{n}>"),
                    "op": "concat", "dim": 0})
    return out if len(out) < len(rules) else []


def _join(module: str, own: str) -> str:
    return f"{module}.{own}" if module else own
