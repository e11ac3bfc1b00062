"""User regexes (rule `from`, `re:` selectors) matched with a time bound, so no pattern can hang a plan.

Names come from checkpoints, patterns from configs: a backtracking pattern such as
`(\\w+\\.?)+\\.weight` against a long Swin-style name takes exponential time in Python's `re`.
The `regex` package (a drop-in for `re`, same syntax and `\\1` templates) avoids most of that
blow-up and takes a timeout, which turns the rest into an error naming the pattern and the name.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from .errors import UserError
from .names import printable

TIMEOUT_S = 0.25  # one match of one name; real patterns take microseconds
Pattern = Any  # regex.Pattern (the package is imported at the first user regex: most runs have none)
Match = Any  # regex.Match


class PatternError(ValueError):
    """A user regex that does not compile, or a `to` template it cannot fill (regex.error's message)."""


@lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> Pattern:
    """`regex.compile`, cached: selectors are matched against every name. Bad syntax: PatternError."""
    import regex

    try:
        return regex.compile(pattern)
    except regex.error as e:
        raise PatternError(str(e)) from None


def expand(m: Match, template: str) -> str:
    """`m.expand(template)` (`\\1`, `\\g<name>`); a group it does not have: PatternError."""
    import regex

    try:
        return m.expand(template)
    except regex.error as e:
        raise PatternError(str(e)) from None


def fullmatch(pattern: Pattern, name: str, where: str) -> Any:
    """`pattern.fullmatch(name)`, or a UserError naming `where`, the pattern and the name when it takes too long."""
    try:
        return pattern.fullmatch(name, timeout=TIMEOUT_S)
    except TimeoutError:
        raise UserError(f"{where}: the regex {printable(pattern.pattern)!r} took over {TIMEOUT_S:g} s to match the name "
                        f"{printable(name)!r} (it backtracks: nested repeats like (\\w+\\.?)+ try exponentially many "
                        "splits). Write it without a repeat inside a repeat, e.g. [\\w.]+\\.weight.") from None
