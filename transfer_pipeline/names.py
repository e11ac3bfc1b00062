"""Dotted tensor and module names ('layer1.0.conv1.weight'): joining, splitting, grouping."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def join_name(module: str, leaf: str) -> str:
    """'layer1' + 'weight' -> 'layer1.weight'; the root module ('') adds nothing."""
    return f"{module}.{leaf}" if module else leaf


def split_name(name: str) -> tuple[str, str]:
    """'layer1.0.weight' -> ('layer1.0', 'weight'); a root tensor -> ('', name)."""
    module, _, leaf = name.rpartition(".")
    return module, leaf


def module_prefixes(names: Iterable[str]) -> list[str]:
    """Every module path above the given names ('layer1', 'layer1.0', ...), in first-seen order."""
    seen: dict[str, None] = {}
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts)):
            seen[".".join(parts[:i])] = None
    return list(seen)


def parents(module: str) -> list[str]:
    """The modules above `module`, root ('') first: 'a.b.c' -> ['', 'a', 'a.b']."""
    parts = module.split(".") if module else []
    return [".".join(parts[:k]) for k in range(len(parts))]


def group_by_component(names: Sequence[str], depth: int = 0) -> dict[str, list[str]]:
    """Names grouped by their dotted component at `depth` (0: the top-level module), in order."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(n.split(".")[depth], []).append(n)
    return groups


def printable(text: str) -> str:
    """`text` with control characters escaped (a name from a file must not drive the terminal)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def printable_text(text: str) -> str:
    """Like `printable`, for whole messages and tables: their own line breaks and tabs are kept."""
    return "\n".join("\t".join(printable(part) for part in line.split("\t")) for line in text.split("\n"))
