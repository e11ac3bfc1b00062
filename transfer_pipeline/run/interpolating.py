"""mode=interpolate (WiSE-FT: Wortsman et al. 2022, "Robust fine-tuning of zero-shot models").

The weights (1 - a) x source + a x fine-tuned, for each a of `interpolate.alphas`, are evaluated on
val and on the data's extra splits (an out-of-distribution split such as digits' `data.shift`):
fine-tuning gains on the target data and loses robustness the source had, and a point between the
two often keeps most of both. Only the tensors the load takes from the source are interpolated; the
fresh ones (a new head) keep the fine-tuned values at every a (the source has none of them). The
source is this run's own (its config: the same as the fine-tuned run's), checked against the SHA-256
the fine-tuned run recorded. `interpolate.csv` and `interpolate.png` show every a; the a where
`trainer.monitor` on val is best is written to model.safetensors, read back and evaluated again
(the run fails if the file does not give the same numbers).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from ..errors import UserError
from .state import Run

log = logging.getLogger(__name__)
KEY = "interpolate.run"


def tuned_run(r: Run) -> tuple[Path, dict[str, Any]]:
    """The fine-tuned run's folder and summary, checked: finished weights, the same source as this run's."""
    from ..files import check_path, resolve_path
    from .folder import check_source_outside

    spec = r.cfg.interpolate.run
    folder = resolve_path(spec, KEY)
    check_path(folder, KEY, "dir", spec)
    weights, record = folder / "model.safetensors", folder / "summary.json"
    check_source_outside([weights, record], r.main_dir or r.run_dir, KEY)
    try:
        summary = json.loads(record.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{KEY}={spec}: cannot read {record} ({type(e).__name__}); give the folder of a finished "
                        "training run (it holds summary.json and model.safetensors).") from None
    if not weights.is_file():
        raise UserError(f"{KEY}={spec}: {folder} has no model.safetensors (its status: {summary.get('status')}); give "
                        "a training run that completed.")
    recorded = summary.get("source_sha256")
    if not summary.get("source") or not recorded:
        raise UserError(f"{KEY}={spec}: the run recorded no source (trained from scratch, or its source was never "
                        "hashed), so there is nothing to interpolate toward; give a run that fine-tuned from a source.")
    if r.source_hash is None:
        raise UserError(f"{KEY}={spec}: this run has no source file (source.path / source.weights) to interpolate "
                        f"from; give the source the run fine-tuned from ({summary['source']}).")
    now = r.source_hash.result()
    if now != recorded:
        raise UserError(f"{KEY}={spec}: the run fine-tuned from {summary['source']} (sha256 {recorded[:16]}), and "
                        f"this run's source is {r.summary.get('source')} (sha256 {now[:16]}); interpolate with the "
                        "config the run was trained with (its .hydra/overrides.yaml).")
    return folder, summary


def refuse_adapters(r: Run) -> None:
    """mode=interpolate / soup read runs' model.safetensors, which hold any adapters merged in the target's names."""
    if r.cfg.adapters.enabled or r.cfg.source.adapter is not None:
        raise UserError(f"mode={r.cfg.mode.value} with adapters: a run's model.safetensors holds its adapters merged "
                        "into the base, in the target's names; drop adapters= / source.adapter here.")


def mix(base: dict[str, Any], tuned: dict[str, Any], loaded: set[str], a: float) -> dict[str, Any]:
    """(1 - a) x base + a x tuned for the loaded floating-point tensors; the tuned value for every other one."""
    return {k: ((1 - a) * base[k] + a * tuned[k]).to(tuned[k].dtype) if k in loaded and tuned[k].is_floating_point()
            else tuned[k] for k in tuned}


def read_tuned(path: Path, base: dict[str, Any], allow_nonfinite: bool, key: str = KEY) -> dict[str, Any]:
    """A run's model.safetensors, checked to be weights of this model (names, shapes, finite values)."""
    import torch
    from safetensors.torch import load_file

    try:
        tuned = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
        raise UserError(f"{key}: cannot read {path} as safetensors ({str(e)[:200]}); it is damaged: re-run or re-export "
                        "it.") from None
    if tuned.keys() != base.keys():
        extra, missing = sorted(set(tuned) - set(base)), sorted(set(base) - set(tuned))
        raise UserError(f"{key}: {path} is not this model's weights (it has {extra[:3]} that the model has not, "
                        f"lacks {missing[:3]}); interpolate with the model config the run was trained with.")
    for k, t in tuned.items():
        if t.shape != base[k].shape:
            raise UserError(f"{key}: {path}'s {k} is {list(t.shape)}, this model's {list(base[k].shape)}; interpolate "
                            "with the model config the run was trained with (model.num_classes?).")
    bad = [k for k, t in tuned.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad and not allow_nonfinite:
        raise UserError(f"{key}: {path} holds NaN or inf in {', '.join(bad[:3])}; every interpolated model would too.")
    return {k: t.to(base[k].device) for k, t in tuned.items()}


def interpolated(r: Run) -> None:
    """Evaluate every a, write interpolate.csv / .png, export the best a's weights and check the file."""
    from .. import files
    from .recipe import weights_meta

    cfg = r.cfg
    refuse_adapters(r)
    folder, summary = tuned_run(r)
    base = {k: v.detach().clone() for k, v in r.model.state_dict().items()}  # as loaded: source + fresh init
    tuned = read_tuned(folder / "model.safetensors", base, cfg.source.allow_nonfinite)
    loaded = set(r.report.plan.loaded)
    monitor = cfg.trainer.monitor
    rows = []
    for a in cfg.interpolate.alphas:
        rows.append({"alpha": float(a), **evaluate_weights(r, mix(base, tuned, loaded, a))})
        log.info("a %.2f  %s", a, "  ".join(f"{k} {v:.4f}" for k, v in rows[-1].items() if k != "alpha"))
    nearest_first = sorted(rows, key=lambda row: row["alpha"])  # a tie goes to the a nearest the source
    best = pick_best(nearest_first, monitor, cfg.trainer.monitor_mode, "mode=interpolate")
    chosen = best["alpha"]
    write_table(r.run_dir / "interpolate.csv", rows)
    plot(r.run_dir / "interpolate.png", nearest_first, chosen, str(folder))
    state = mix(base, tuned, loaded, chosen)
    path = r.run_dir / "model.safetensors"
    files.save_weights(path, state, {**weights_meta(r), "source": str(r.summary["source"]),
                                     "weights": f"interpolated a={chosen:g}: (1-a) x source + a x {folder}"})
    from safetensors.torch import load_file

    again = evaluate_weights(r, load_file(str(path)))  # the file as a user will load it
    if any(again[k] != best[k] for k in best if k != "alpha"):
        raise RuntimeError(f"bug: {path} gives {again} and a={chosen} gave {best}")
    r.summary.update(status="interpolated", **{k: v for k, v in best.items() if k != "alpha"},
                     interpolate={"run": str(folder), "chosen_alpha": chosen, "monitor": monitor, "rows": rows,
                                  "loaded_tensors": len(loaded & set(tuned)), "tuned_status": summary.get("status")})
    log.info("Interpolated between the source and %s: a=%g is best by %s (%.4f; a=1, the fine-tuned weights: %s); "
             "its weights (read back and checked) in %s, every a in interpolate.csv and interpolate.png", folder,
             chosen, monitor, best[monitor], next((f"{row[monitor]:.4f}" for row in rows if row["alpha"] == 1.0),
                                                  "not evaluated"), path)


def evaluate_weights(r: Run, state: dict[str, Any]) -> dict[str, float]:
    """`state` put into the run's model, evaluated on val and the data's extra splits: {split_metric: value}."""
    from ..training.evaluate import evaluate

    r.model.load_state_dict(state)
    out: dict[str, float] = {}
    for split, loader in {"val": r.loaders[1], **r.extra_loaders}.items():
        got = evaluate(r.model, loader, r.engine, r.task, r.cfg.trainer.limit_val_batches)
        out.update({f"{split}_{k}": float(v) for k, v in got.items()})
    return out


def pick_best(rows: list[dict[str, Any]], monitor: str, mode: str | None, what: str) -> dict[str, Any]:
    """The row where `monitor` is best (max, or min for losses / trainer.monitor_mode=min); the first on a tie."""
    from ..training.monitor import monitor_mode

    if monitor not in rows[0]:
        raise UserError(f"trainer.monitor={monitor}: {what} measures "
                        f"{', '.join(k for k in rows[0] if k.endswith(('_acc', '_loss', '_f1', '_mae', '_mse')))}; "
                        "pick one of them.")
    sign = 1 if monitor_mode(monitor, mode) == "max" else -1
    return max(rows, key=lambda row: sign * row[monitor])


def write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    import io

    from ..files import atomic_write_bytes

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def plot(path: Path, rows: list[dict[str, Any]], chosen: float, run: str) -> None:
    from ..training.curves import pyplot, save_figure

    plt = pyplot("interpolate.png")
    if plt is None:
        return
    metric = next((k.split("_", 1)[1] for k in rows[0] if k.endswith("_acc")), "loss")
    splits = [k for k in rows[0] if k.endswith(f"_{metric}")]
    fig, ax = plt.subplots(figsize=(6, 4))
    alphas = [row["alpha"] for row in rows]
    for k in splits:
        ax.plot(alphas, [row[k] for row in rows], marker="o", label=k)
    ax.axvline(chosen, color="grey", linestyle="--", label=f"chosen a={chosen:g}")
    ax.set_xlabel("a: (1-a) x source + a x fine-tuned")
    ax.set_ylabel(metric)
    ax.set_title(f"interpolation toward {Path(run).name}", fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, path)
