"""Value checks the schema's `__post_init__` methods use: each message names the key, the value and the range."""

from __future__ import annotations

import math
from typing import Any

from ..errors import UserError


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_number(where: str, value: Any, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, want: str = "") -> None:
    """A finite number in [low, high] (open ends when asked); the message names the key, the value and the range."""
    ok = _is_number(value) and math.isfinite(value)
    ok = ok and (low is None or (value > low if low_open else value >= low))
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if not ok:
        if not want:
            lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
            hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
            want = "a finite number" + (f" {lo}" if lo else "") + (" and" if lo and hi else "") + (f" {hi}" if hi else "")
        raise UserError(f"{where}={value!r}: must be {want}.")


def check_count(where: str, value: Any, low: int = 0, high: int | None = None, want: str = "") -> None:
    """A whole number in [low, high]."""
    if not _is_count(value) or value < low or (high is not None and value > high):
        raise UserError(f"{where}={value!r}: must be {want or f'a whole number >= {low}' + (f' and <= {high}' if high is not None else '')}.")


def check_lr_fields(where: str, lr: Any, lr_mult: Any, warmup: Any) -> None:
    """`lr` / `lr_mult` / `warmup_steps` of a group or an event: one of lr and lr_mult, none negative."""
    if lr is not None and lr_mult is not None:
        raise UserError(f"{where}: sets both lr={lr} and lr_mult={lr_mult}; give one (lr_mult multiplies optim.lr).")
    for key, value in (("lr", lr), ("lr_mult", lr_mult)):
        if value is not None:
            check_number(f"{where}.{key}", value, 0, want="a finite number >= 0")
    if warmup is not None and (not _is_count(warmup) or warmup < 0):
        raise UserError(f"{where}.warmup_steps={warmup!r}: must be a whole number of steps >= 0.")
