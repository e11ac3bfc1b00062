"""The per-epoch progress bar (tqdm): loss, accuracy, samples/s and ETA while an epoch trains.

Shown only on a terminal (`trainer.progress: true`, the default): in a log file or a pipe a bar
is noise, and the per-epoch line says the same once per epoch.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO


class Bar:
    def __init__(self, epoch: int, epochs: int, steps: int, stream: TextIO, mininterval: float = 0.1,
                 desc: str | None = None) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=steps, desc=desc or f"epoch {epoch + 1}/{epochs}", unit="batch", file=stream, leave=False,
                        dynamic_ncols=True, mininterval=mininterval)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def show(self, **metrics: float) -> None:
        """The postfix, when the loop has read the metrics from the device (not every step: a read is a sync)."""
        shown = {k.replace("_per_", "/"): f"{v:{'.0f' if k == 'samples_per_s' else '.4f' if k == 'loss' else '.3f'}}"
                 for k, v in metrics.items()}
        self.bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        self.bar.close()


def bar_factory(enabled: bool, epochs: int, stream: TextIO | None = None, mininterval: float = 0.1,
                desc: str | None = None) -> Any:
    """`progress(epoch, steps) -> Bar` for the training loop (or with its own `desc`), or None where no bar is wanted."""
    stream = stream or sys.stderr
    if not enabled or not getattr(stream, "isatty", lambda: False)():
        return None
    return lambda epoch, steps: Bar(epoch, epochs, steps, stream, mininterval=mininterval, desc=desc)
