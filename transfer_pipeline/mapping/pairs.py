"""Which source module and target module compute the same function when a load is right: from the plan's
names alone (no model, no torch), for mapping.verify to compare their outputs."""

from __future__ import annotations

import os
from collections.abc import Iterable

from ..names import parents, split_name
from .plan import LoadPlan

# Ops that only re-lay out the same numbers: a module fed them computes what the source module did.
# adapt_channels, select and interpolate change the function, so their modules are not compared.
EXACT_OPS = frozenset({"copy", "concat", "split", "transpose", "reshape"})


def _in_source(name: str, modules: set[str], prefix: str) -> str | None:
    """A stored source name as the source model names it (a checkpoint may carry `module.`); None: not in it."""
    for n in (name, name[len(prefix):] if prefix and name.startswith(prefix) else None):
        if n is not None and split_name(n)[0] in modules:
            return n
    return None


def _ancestors(name: str) -> list[str]:
    return [*parents(name), name]  # '' first, then each module path down to the name itself


def paired_modules(plan: LoadPlan, source_modules: Iterable[str],
                   target_modules: Iterable[str]) -> list[tuple[str, str]]:
    """(source module, target module) pairs that compute the same function if the load is right, target order.

    T pairs with S when every tensor under T loads by an exact op from tensors under S, none under T
    is left unloaded, and every used tensor under S goes under T; S is the deepest such module.
    Wrappers with the same tensors (and no unused ones) pair too, innermost first, a target container
    (not owning its tensors directly) never with a source leaf. The target root is left to the
    final-output check. Names only: no model is needed.
    """
    smods, tmods = set(source_modules) | {""}, [t for t in target_modules if t]
    writes: dict[str, list[tuple[str, list, bool]]] = {}  # target module -> (target, sources, exact) under it
    feeds: dict[str, set[str]] = {}  # source module -> the targets of every entry reading a tensor under it
    for e in plan.entries:
        srcs = [_in_source(n, smods, plan.stripped_prefix) for n in e.sources]
        for m in _ancestors(e.target):
            writes.setdefault(m, []).append((e.target, srcs, e.op in EXACT_OPS))
        for m in {a for n in srcs if n is not None for a in _ancestors(n)}:
            feeds.setdefault(m, set()).add(e.target)
    # an unloaded tensor (fresh init) changes its modules' function; the BN counter has no effect in eval
    unloaded = {a for n in plan.missing if not n.endswith("num_batches_tracked") for a in _ancestors(n)}
    spare = {a for n in plan.unexpected for a in _ancestors(_in_source(n, smods, plan.stripped_prefix) or n)}

    chains: dict[str, tuple[bool, list[tuple[bool, str]]]] = {}  # deepest S -> (S is a leaf, [(T is a leaf, T)])
    for t in tmods:
        mine = writes.get(t, [])
        if not mine or t in unloaded or not all(exact and None not in srcs for _, srcs, exact in mine):
            continue
        owners = [split_name(n)[0] for _, srcs, _ in mine for n in srcs]
        s = ".".join(os.path.commonprefix([o.split(".") for o in owners]))  # the deepest module holding them all
        while s not in smods:
            s = parents(s)[-1]
        if all(x.startswith(t + ".") for x in feeds[s]):  # (x: tensor names)
            leaf = all(split_name(name)[0] == t for name, _, _ in mine)
            chains.setdefault(s, (all(o == s for o in owners), []))[1].append((leaf, t))
    pairs: dict[str, str] = {}
    for s, (s_leaf, ts) in chains.items():
        up = [a for a in reversed(parents(s)) if a in smods]  # wrappers around s: the same tensors, nothing else
        up = up[:next((i for i, a in enumerate(up) if feeds[a] != feeds[s] or a in spare), len(up))]
        ts.sort(key=lambda lt: -lt[1].count("."))
        leaves, containers = [t for leaf, t in ts if leaf], [t for leaf, t in ts if not leaf]
        pairs.update(zip(leaves, [s]))  # a target leaf (at most one, the innermost) with the deepest source module
        # a container pairs with a wrapper of a source leaf, or with the leaf itself where there is no wrapper and
        # no target leaf: the leaf is split across the container (an nn.LSTM into per-layer cells; verify says
        # "not comparable" when the two compute otherwise)
        pairs.update(zip(containers, up if leaves or (s_leaf and up) else [s, *up]))
    return [(pairs[t], t) for t in tmods if t in pairs]
