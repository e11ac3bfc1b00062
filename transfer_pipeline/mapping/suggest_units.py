"""Units for mapping.suggest: a recurrent module split per layer and direction, and rules that keep its names.

torch's nn.RNN, nn.LSTM and nn.GRU hold every layer in one module: `lstm.weight_ih_l0`,
`lstm.weight_ih_l1`, `rnn.weight_hh_l0_reverse`, `weight_hr_l0` with `proj_size`. Another model
may keep one module per layer (`cells.0.weight_ih` of nn.LSTMCell, `layers.1.weight_ih_l0` of a
one-layer nn.LSTM each), so whole modules never have a signature in common. Split into one unit
per (layer, direction), with the suffix taken off the names (`weight_ih`), `lstm` layer 1 and
`cells.1` are equal, and their tensors pair by name. Pure: names only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

RECURRENT = re.compile(r"(\w+?)_l(\d+)(_reverse)?")  # torch's per-layer suffix: weight_ih_l1_reverse
ORDER = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")  # torch's order within a layer


def units(own: Sequence[str]) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """[(unit, names without the suffix, own names)]: one per layer and direction when every name of the
    module carries a recurrent suffix (in layer order, forward first), else [('', own, own)].

    Within a unit the tensors go in torch's order, so a checkpoint whose names were sorted
    (safetensors) still has the signature of the module.
    """
    hits = [RECURRENT.fullmatch(n) for n in own]
    if not own or not all(hits):
        return [("", tuple(own), tuple(own))]
    groups: dict[tuple[int, bool], list[tuple[str, str]]] = {}
    for n, m in zip(own, hits):
        groups.setdefault((int(m.group(2)), bool(m.group(3))), []).append((m.group(1), n))
    out = []
    for (layer, reverse), members in sorted(groups.items()):
        members.sort(key=lambda bn: ORDER.index(bn[0]) if bn[0] in ORDER else len(ORDER))  # stable for the rest
        out.append((f"l{layer}" + ("_reverse" if reverse else ""), tuple(b for b, _ in members),
                    tuple(n for _, n in members)))
    return out


def unit_tail(s: str, t: str) -> tuple[str, str, str, str] | None:
    """(source head, source suffix, target head, target suffix) where `s` = head.base+suffix and `t` likewise
    with the same base and a recurrent suffix on at least one side (`lstm.weight_ih_l1` -> `cells.1.weight_ih`):
    one rule with `(\\w+)` for the base then serves every tensor of the unit."""
    if "." not in s or "." not in t:
        return None
    (sh, _, sl), (th, _, tl) = s.rpartition("."), t.rpartition(".")
    (sb, ss), (tb, ts) = _split(sl), _split(tl)
    if sb != tb or not (ss or ts):
        return None
    return sh, ss, th, ts


def _split(own: str) -> tuple[str, str]:
    m = RECURRENT.fullmatch(own)
    return (m.group(1), own[len(m.group(1)):]) if m else (own, "")
