"""The end of a `-m` sweep: `sweep_summary.csv`, a table sorted by the monitored metric, `sweep_summary.png`.

Read from the jobs' own folders (each job's `.hydra/overrides.yaml` and `summary.json`), so a job
that failed, was interrupted or never wrote a summary still has its row, with its status and error.
The swept keys are the overrides whose values differ between jobs: one column each. No Hydra here
(callbacks.SweepSummary calls it at `on_multirun_end`), no torch.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from ..tables import format_table

DONE = ("completed", "planned", "exported", "evaluated", "predicted", "interpolated",
        "souped")  # how each mode ends well (summary.json status)


def _overrides(job: Path) -> dict[str, str]:
    import yaml

    try:
        items = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
    except (OSError, yaml.YAMLError):
        return {}
    pairs = (str(o).lstrip("+~").split("=", 1) for o in items)
    # a sweeper writes each value with Hydra's escapes (pkg\\://...): shown as typed
    return {p[0]: re.sub(r"\\(.)", r"\1", p[1]) if len(p) > 1 else "" for p in pairs}


def _summary(job: Path) -> dict[str, Any]:
    try:
        data = json.loads((job / "summary.json").read_text())
    except (OSError, ValueError):
        return {"status": "missing", "error": "no readable summary.json"}
    return data if isinstance(data, dict) else {"status": "missing", "error": "summary.json is not an object"}


def collect(sweep_dir: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(the swept keys, one row per job folder), rows in job order."""
    jobs = sorted((p for p in Path(sweep_dir).iterdir() if p.is_dir() and (p / ".hydra").is_dir()),
                  key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
    overrides = {job: _overrides(job) for job in jobs}
    keys: list[str] = []
    for ov in overrides.values():
        keys += [k for k in ov if k not in keys]
    swept = [k for k in keys if len({ov.get(k) for ov in overrides.values()}) > 1]
    rows = []
    for job in jobs:
        s = _summary(job)
        monitor = s.get("monitor")
        row: dict[str, Any] = {"job": job.name, **{k: overrides[job].get(k, "") for k in swept}}
        row.update(status=s.get("status"), monitor=monitor, best=s.get(f"best_{monitor}") if monitor else None,
                   best_epoch=s.get("best_epoch"), val_acc=s.get("val_acc"), val_loss=s.get("val_loss"),
                   epochs=s.get("epochs"), samples_per_s=s.get("train_samples_per_s"), seconds=s.get("seconds"),
                   error=str(s.get("error", ""))[:200], run_dir=str(job))
        rows.append(row)
    return swept, rows


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best first by the monitored metric (min for losses, max otherwise); jobs without a value last."""
    monitor = next((r["monitor"] for r in rows if r["monitor"]), "val_acc")
    sign = 1 if "loss" in monitor else -1
    return sorted(rows, key=lambda r: (_number(r["best"]) is None, sign * (_number(r["best"]) or 0.0)))


def write(sweep_dir: Path) -> tuple[str, list[str]]:
    """Write sweep_summary.csv and .png into `sweep_dir`; returns the table to print and the folders of the
    jobs that did not complete (the launcher may have run them in other processes, or on other machines)."""
    from ..files import write_csv

    sweep_dir = Path(sweep_dir)
    swept, rows = collect(sweep_dir)
    if not rows:
        return f"Sweep {sweep_dir}: no job folders.", []
    order = ranked(rows)
    write_csv(sweep_dir / "sweep_summary.csv", order)
    _plot(sweep_dir / "sweep_summary.png", swept, rows)
    failed = [r for r in rows if r["status"] not in DONE]

    def shown(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))

    headers = ["job", *swept, "status", "best", "epochs", "seconds"]
    table = format_table(headers, [[shown(r[h]) for h in headers] for r in order])
    monitor = next((r["monitor"] for r in rows if r["monitor"]), "val_acc")
    text = (f"Sweep of {len(rows)} job(s), best {monitor} first ({sweep_dir / 'sweep_summary.csv'}):\n{table}")
    if failed:
        text += f"\n{len(failed)} job(s) did not complete: " + ", ".join(f"{r['job']} ({r['status']})" for r in failed)
    return text, [r["run_dir"] for r in failed]


def objective(summary: dict[str, Any]) -> float | None:
    """What a sweeper optimises for a job: the best value of its trainer.monitor, else its val_acc."""
    return summary.get(f"best_{summary.get('monitor')}", summary.get("val_acc"))


def report(sweep_dir: Path) -> list[str]:
    """`write`, and the table printed: however a sweep ends (its last job, Ctrl-C, every trial failed).
    Returns the folders of the jobs that did not complete; a summary that cannot be written is a warning
    (the jobs' own folders hold every result), never a traceback at the end of a sweep."""
    try:
        text, incomplete = write(sweep_dir)
    except OSError as e:
        print(f"warning: could not write the sweep summary in {sweep_dir}: {e}", file=sys.stderr)
        return []
    print(text, flush=True)
    return incomplete


def _plot(path: Path, swept: list[str], rows: list[dict[str, Any]]) -> bool:
    """The best metric against each swept value, one panel per swept key; jobs without a value marked x."""
    from ..training.curves import pyplot, save_figure

    plt = pyplot("sweep_summary.png")
    if plt is None:
        return False
    keys = swept or ["job"]
    monitor = next((r["monitor"] for r in rows if r["monitor"]), "val_acc")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), constrained_layout=True, squeeze=False)
    for ax, key in zip(axes[0], keys):
        values = list(dict.fromkeys(str(r[key]) for r in rows))  # categories, in sweep order
        good = [(values.index(str(r[key])), _number(r["best"])) for r in rows if _number(r["best"]) is not None]
        bad = [values.index(str(r[key])) for r in rows if _number(r["best"]) is None]
        if good:
            ax.scatter([x for x, _ in good], [y for _, y in good], label=f"best {monitor}")
        if bad:
            low = min((y for _, y in good), default=0.0)
            ax.scatter(bad, [low] * len(bad), marker="x", color="red", label="failed / no value")
        ax.set_xticks(range(len(values)), [v[:18] for v in values], rotation=30, ha="right", fontsize=7)
        ax.set_xlabel(key)
        ax.set_ylabel(monitor)
        ax.legend(fontsize=7)
    save_figure(fig, path)
    return True
