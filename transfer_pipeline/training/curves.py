"""curves.png: loss and accuracy per epoch (train and val), every group's LR, and the events.

matplotlib is imported here only (it costs a second), at the end of a run. Without it the run
says once that no plot was written.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def write_curves(path: Path, history: Sequence[dict[str, Any]], events: Sequence[tuple[float, str]] = ()) -> bool:
    """Plot `history` (metrics.csv rows) to `path`; `events`: (epoch, label) marks. False when not written."""
    if not history:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no curves.png written (pip install matplotlib)")
        return False
    from .outputs import atomic_write_bytes

    epochs = [int(r["epoch"]) + 1 for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    panels = [("loss", ["train_loss", "val_loss", "ema_val_loss"]), ("accuracy", ["train_acc", "val_acc", "ema_val_acc"])]
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            if key in history[0]:
                ax.plot(epochs, [float(r[key]) for r in history], marker="o", ms=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    lr_keys = [k for k in history[0] if k.startswith("lr/")]
    for key in lr_keys:
        axes[2].plot(epochs, [float(r[key]) for r in history], marker=".", label=key[3:])
    axes[2].set_title("learning rate (last step of each epoch)")
    axes[2].set_xlabel("epoch")
    if lr_keys:
        axes[2].legend(fontsize=8)
    for at, label in events:
        for ax in axes:
            ax.axvline(at + 0.5, color="grey", linestyle="--", linewidth=0.8)
        axes[0].annotate(label, (at + 0.5, 1), xycoords=("data", "axes fraction"), fontsize=7, rotation=90,
                         va="top", ha="right", color="grey")
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return True
