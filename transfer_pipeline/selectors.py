"""One selector language for mapping, freezing, BatchNorm and LR groups.

A selector is a glob over dotted names (`layer4.*`, `*.bn1.*`, `fc.*`) or a regex written
`re:<pattern>` (matched against the whole name). A plain module name (`layer4`, `fc`) selects
everything below it, so `head` never selects `decode_head.weight`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

from .errors import UserError, did_you_mean
from .names import module_prefixes
from .patterns import PatternError, compile_pattern, fullmatch


def matches(selector: str, name: str, where: str = "selector") -> bool:
    if selector.startswith("re:"):
        return fullmatch(compile_pattern(selector[3:]), name, where) is not None
    return fnmatchcase(name, selector) or fnmatchcase(name, selector + ".*")


def select(selector: str, names: Iterable[str], where: str = "selector") -> list[str]:
    return [n for n in names if matches(selector, n, where)]


def check_selector(selector: str, where: str) -> None:
    if selector.startswith("re:"):
        try:
            compile_pattern(selector[3:])
        except PatternError as e:
            raise UserError(f"{where}: selector {selector!r} is not a valid regex: {e}.") from None


def select_all(selectors: Sequence[str], names: Sequence[str], where: str) -> list[str]:
    """Names matched by any selector, in `names` order; a selector matching nothing is an error."""
    chosen: set[str] = set()
    for sel in selectors:
        check_selector(sel, where)
        hit = select(sel, names, where)
        if not hit:
            hint = did_you_mean(sel, module_prefixes(names) + list(names))
            raise UserError(f"{where}: selector {sel!r} matches no parameter.{hint}")
        chosen.update(hit)
    return [n for n in names if n in chosen]
