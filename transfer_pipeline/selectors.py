"""One selector language for mapping, freezing, BatchNorm and LR groups.

A selector is a glob over dotted names (`layer4.*`, `*.bn1.*`, `fc.*`) or a regex written
`re:<pattern>` (matched against the whole name). A plain module name (`layer4`, `fc`) selects
everything below it, so `head` never selects `decode_head.weight`.

Model parts: `@head` (the classifier), `@blocks` (every stage, stem first) and `@blocks.N` (one
stage, by Python index: `@blocks.-1` is the last) name modules of the target model. They are
expanded into module names once the model is built (model_parts.py), before any stage matches
them; here they are parsed and, if one reaches a stage unexpanded, refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from typing import Any

from .errors import UserError, close_names, did_you_mean
from .names import module_prefixes
from .patterns import PatternError, compile_pattern, fullmatch


def matches(selector: str, name: str, where: str = "selector") -> bool:
    if selector.startswith("re:"):
        return fullmatch(compile_pattern(selector[3:]), name, where) is not None
    return fnmatchcase(name, selector) or fnmatchcase(name, selector + ".*")


def select(selector: str, names: Iterable[str], where: str = "selector") -> list[str]:
    return [n for n in names if matches(selector, n, where)]


PARTS = ("head", "blocks")  # @head, @blocks, @blocks.N


def is_part(selector: Any) -> bool:
    return isinstance(selector, str) and selector.startswith("@")


def parse_part(selector: str, where: str) -> tuple[str, int | None]:
    """'@blocks.-1' -> ('blocks', -1); '@head' -> ('head', None). An unknown part is an error with close names."""
    name, dot, index = selector[1:].partition(".")
    if name not in PARTS:
        close = close_names(name, PARTS) or list(PARTS)
        raise UserError(f"{where}: {selector!r} is not a model part. "
                        f"Did you mean {' or '.join('@' + c for c in close)}? "
                        "The parts are @head (the classifier), @blocks (every block, stem first) and @blocks.N (one "
                        "block: @blocks.0 the first, @blocks.-1 the last).")
    if not dot:
        return name, None
    if name != "blocks" or not re.fullmatch(r"-?\d+", index):
        raise UserError(f"{where}: {selector!r}: only @blocks takes an index, a whole number (@blocks.0 the first "
                        "block, @blocks.-1 the last); for names inside a part write them out, e.g. layer4.0.*.")
    return name, int(index)


def check_selector(selector: str, where: str) -> None:
    if is_part(selector):
        parse_part(selector, where)
        raise UserError(f"{where}: {selector!r} names a part of the model and is expanded where the model is "
                        "known (python run.py, and the Python API's functions that take the model); "
                        "here write module names (e.g. fc, layer4).")
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
