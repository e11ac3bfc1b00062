"""curves.png: loss and the task's metrics (accuracy, F1, MAE / RMSE) per epoch (train and val), every group's LR, and the events.

matplotlib is imported here only (it costs a second), at the end of a run: `pyplot` and
`save_figure` are the one home of its setup, for confusion.png and sweep_summary.png too. Without
it the run says once that no plot was written.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def pyplot(what: str) -> Any:
    """matplotlib's pyplot on the Agg backend (files only, no display needed); None, said in the log,
    when matplotlib is not installed (it is optional): `what` names the plot that is then not written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no %s written (pip install matplotlib)", what)
        return None
    return plt


def save_figure(fig: Any, path: Path) -> None:
    """`fig` as a PNG at `path`, written whole or not at all (files.atomic_write_bytes), then closed."""
    import io

    import matplotlib.pyplot as plt

    from ..files import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_curves(path: Path, history: Sequence[dict[str, Any]], events: Sequence[tuple[float, str]] = ()) -> bool:
    """Plot `history` (metrics.csv rows) to `path`; `events`: (epoch, label) marks. False when not written."""
    if not history:
        return False
    plt = pyplot("curves.png")
    if plt is None:
        return False
    epochs = [int(r["epoch"]) + 1 for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    metric_keys = [k for k in history[0] if k.startswith(("train_", "val_", "ema_val_")) and not k.endswith("loss")]
    panels = [("loss", ["train_loss", "val_loss", "ema_val_loss"]), ("metrics", metric_keys)]
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
    save_figure(fig, path)
    return True


def write_confusion(path: Path, confusion: dict[str, Any], title: str) -> bool:
    """confusion.png: the confusion matrix (rows: true class, columns: predicted), counts in the cells when few."""
    plt = pyplot("confusion.png")
    if plt is None:
        return False
    names, matrix = confusion["classes"], confusion["matrix"]
    k = len(names)
    side = min(3 + 0.45 * k, 30)
    fig, ax = plt.subplots(figsize=(side + 1, side), constrained_layout=True)
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    if k <= 40:  # beyond that, names and numbers no longer fit
        ax.set_xticks(range(k), names, rotation=90 if k > 8 else 0, fontsize=8)
        ax.set_yticks(range(k), names, fontsize=8)
    if k <= 20:
        top = max(max(row) for row in matrix) or 1
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if v > top / 2 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"confusion matrix ({title})")
    save_figure(fig, path)
    return True
