"""`source.key: auto`: which of a checkpoint's nested state dicts to load, chosen by fit with the target.

A torch checkpoint often nests several (`state_dict` and `ema`, `model` and `optimizer` ...).
The source reader returns them all as candidates; this picks the one whose names and shapes
match the target best (after the usual prefix detection), then the usual key name, then the
larger one, and says in a note what it picked and why (without a target, sources.read.preferred
chooses by key name alone). Pure: names and shapes only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from ..sources.read import SourceWeights, nested_preference
from ..tensor_meta import TensorMeta
from .prefixes import match_count


def choose_nested(source: SourceWeights, target: Mapping[str, TensorMeta]) -> SourceWeights:
    """`source` itself when it is flat; else the candidate that fits `target` best, with a note saying why."""
    if not source.candidates:
        return source
    options = source.candidates
    fits = {kp: match_count(c.meta, target) for kp, c in options.items()}
    best = max(options, key=lambda kp: (fits[kp], nested_preference(kp), len(options[kp].meta)))
    others = ", ".join(f"{kp or '<top level>'!r} {fits[kp]}" for kp in options if kp != best)
    note = (f"source.key=auto picked nested key {best or '<top level>'!r}: {fits[best]} of its "
            f"{len(options[best].meta)} tensors match the target (others: {others}); set source.key to choose another")
    chosen = options[best]
    return replace(chosen, notes=[note] + [n for n in chosen.notes if not n.startswith("weights under nested key")])
