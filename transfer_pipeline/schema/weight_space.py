"""Weight-space modes' nodes: `interpolate` (mode=interpolate, WiSE-FT) and `soup` (mode=soup, model soups)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import List, Optional

from ..errors import UserError

MAX_ALPHAS = 101


@dataclass
class InterpolateConfig:
    run: Optional[str] = None  # mode=interpolate: the fine-tuned run folder (its model.safetensors and summary.json)
    alphas: List[float] = field(default_factory=lambda: [i / 10 for i in range(11)])  # a in (1-a) source + a tuned

    def check(self, on: bool) -> None:
        if not on:
            if self.run is not None:  # it would do nothing
                raise UserError("interpolate.run is set but mode is not interpolate; add mode=interpolate, or drop "
                                "interpolate.run.")
            return
        if self.run is None or not str(self.run).strip():
            raise UserError("mode=interpolate needs interpolate.run: the folder of a run that fine-tuned from this "
                            "config's source (e.g. interpolate.run=outputs/2026-12-07/10-00-00).")
        alphas = list(self.alphas)
        if not alphas or len(alphas) > MAX_ALPHAS:
            raise UserError(f"interpolate.alphas: give 1 to {MAX_ALPHAS} values in [0, 1] (0 = the source's weights, "
                            f"1 = the fine-tuned run's), e.g. [0, 0.5, 1]; got {len(alphas)}.")
        for i, a in enumerate(alphas):
            if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or not 0 <= a <= 1:
                raise UserError(f"interpolate.alphas[{i}]={a!r}: must be in [0, 1] (0 = the source's weights, 1 = the "
                                "fine-tuned run's); extrapolating past them is not supported.")
        if len(set(alphas)) != len(alphas):
            raise UserError(f"interpolate.alphas={alphas}: a value appears twice; give each once.")


class SoupExport(Enum):
    greedy = "greedy"  # ingredients added best first, each kept only if val does not get worse (Wortsman et al. 2022)
    uniform = "uniform"  # the average of every ingredient


@dataclass
class SoupConfig:
    sweep: Optional[str] = None  # mode=soup: a -m sweep's folder, whose jobs fine-tuned one model from one source
    export: SoupExport = SoupExport.greedy  # the soup written to model.safetensors

    def check(self, on: bool) -> None:
        if not on and self.sweep is not None:  # it would do nothing
            raise UserError("soup.sweep is set but mode is not soup; add mode=soup, or drop soup.sweep.")
        if on and (self.sweep is None or not str(self.sweep).strip()):
            raise UserError("mode=soup needs soup.sweep: the folder of a -m sweep whose jobs fine-tuned from this "
                            "config's source (e.g. soup.sweep=multirun/2026-12-07/10-00-00).")
