"""User regexes (rule `from`, `re:` selectors) matched with a time bound, so no pattern can hang a plan.

Names come from checkpoints, patterns from configs: a backtracking pattern such as
`(\\w+\\.?)+\\.weight` against a long Swin-style name takes exponential time in Python's `re`.
The `regex` package (a drop-in for `re`, same syntax and `\\1` templates) avoids most of that
blow-up and takes a timeout, which turns the rest into an error naming the pattern and the name.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import regex

from .errors import UserError
from .names import printable

TIMEOUT_S = 0.25  # one match of one name; real patterns take microseconds
error = regex.error
Pattern = regex.Pattern
Match = regex.Match


@lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> regex.Pattern:
    """`regex.compile` (raises `regex.error` on bad syntax), cached: selectors are matched against every name."""
    return regex.compile(pattern)


def fullmatch(pattern: regex.Pattern, name: str, where: str) -> Any:
    """`pattern.fullmatch(name)`, or a UserError naming `where`, the pattern and the name when it takes too long."""
    try:
        return pattern.fullmatch(name, timeout=TIMEOUT_S)
    except TimeoutError:
        raise UserError(f"{where}: the regex {printable(pattern.pattern)!r} took over {TIMEOUT_S:g} s to match the name "
                        f"{printable(name)!r} (it backtracks: nested repeats like (\\w+\\.?)+ try exponentially many "
                        "splits). Write it without a repeat inside a repeat, e.g. [\\w.]+\\.weight.") from None
