"""The one exception type for a person's mistake (bad config, bad file, bad shape).

`run.py` prints its message without a traceback and exits non-zero; anything else is a bug
in the program and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in the config or inputs: the message says what, where and how to fix it."""


def close_names(word: str, choices: Iterable[str], n: int = 5) -> list[str]:
    """The names in `choices` closest to `word`, best first (for 'did you mean' hints)."""
    choices = list(dict.fromkeys(choices))
    close = difflib.get_close_matches(word, choices, n=n, cutoff=0.5)
    if len(close) < n:
        # substring hits catch 'layer4' vs 'model.layer4.0.conv1.weight' that ratio-based matching misses
        close += [c for c in choices if word.strip("*.") and word.strip("*.") in c and c not in close]
    return close[:n]


def did_you_mean(word: str, choices: Iterable[str], n: int = 5) -> str:
    close = close_names(word, choices, n)
    return f" Closest names: {', '.join(close)}." if close else ""
