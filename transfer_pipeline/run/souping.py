"""mode=soup (model soups: Wortsman et al. 2022, "Model soups: averaging weights of multiple fine-tuned models
improves accuracy without increasing inference time").

The jobs of a `-m` sweep (`soup.sweep`) that fine-tuned one model from one source (this run's config:
its source's SHA-256 must be the one every job recorded) are the ingredients. Each is evaluated on val
and the data's extra splits; then the uniform soup (the average of all) and the greedy soup (the
ingredients sorted best first by `trainer.monitor` on val, each added only if the soup's val does not get
worse) are evaluated too. Every tensor is averaged (BatchNorm statistics too); integer tensors are the
first ingredient's. `soup.csv` has one row per ingredient and soup; `soup.export` (greedy by default)
is written to model.safetensors, read back and evaluated again. Jobs that did not complete are left
out by name; a job of another source or another model is an error naming it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..errors import UserError
from .interpolating import evaluate_weights, pick_best, read_tuned, refuse_adapters, write_table
from .state import Run

log = logging.getLogger(__name__)
KEY = "soup.sweep"


def ingredients(r: Run) -> tuple[Path, list[Path]]:
    """The sweep folder and its completed jobs (folders with summary.json and model.safetensors), checked."""
    from ..files import check_path, resolve_path
    from .folder import check_source_outside

    spec = r.cfg.soup.sweep
    sweep = resolve_path(spec, KEY)
    check_path(sweep, KEY, "dir", spec)
    jobs = sorted((p for p in sweep.iterdir() if (p / "summary.json").is_file()),
                  key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
    if not jobs:
        raise UserError(f"{KEY}={spec}: {sweep} holds no job folders (sub-folders with a summary.json); give the "
                        "folder of a -m sweep (e.g. multirun/<date>/<time>).")
    check_source_outside([job / "model.safetensors" for job in jobs], r.main_dir or r.run_dir, KEY)
    now = r.source_hash.result() if r.source_hash is not None else None
    kept, left = [], []
    for job in jobs:
        try:
            summary = json.loads((job / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
        if summary.get("status") != "completed" or not (job / "model.safetensors").is_file():
            left.append(f"{job.name} ({summary.get('status', 'unreadable summary.json')})")
            continue
        recorded = summary.get("source_sha256")
        if not summary.get("source") or not recorded:
            raise UserError(f"{KEY}: job {job} recorded no source (trained from scratch?); a soup averages runs "
                            "fine-tuned from one source: give a sweep whose jobs all loaded it.")
        if now is None:
            raise UserError(f"{KEY}: this run has no source file to check the jobs against; give the source the "
                            f"sweep fine-tuned from ({summary['source']}).")
        if recorded != now:
            raise UserError(f"{KEY}: job {job} fine-tuned from {summary['source']} (sha256 {recorded[:16]}), not from "
                            f"this run's source {r.summary.get('source')} (sha256 {now[:16]}); a soup needs one source "
                            "for every job: give this config's source, or leave that job out of the folder.")
        kept.append(job)
    if left:
        log.warning("%s: left out %d job(s) that did not complete: %s", KEY, len(left), ", ".join(left[:10]))
    if len(kept) < 2:
        raise UserError(f"{KEY}={spec}: {len(kept)} completed job(s) with weights; a soup needs at least 2"
                        f"{' (left out: ' + ', '.join(left[:5]) + ')' if left else ''}.")
    return sweep, kept


def add(total: dict[str, Any] | None, state: dict[str, Any]) -> dict[str, Any]:
    """A running sum of the floating-point tensors (each job's file is read once for it); the first state's others."""
    if total is None:
        return dict(state)
    return {k: t + state[k] if t.is_floating_point() else t for k, t in total.items()}


def mean(total: dict[str, Any], n: int) -> dict[str, Any]:
    """The running sum of n states as their element-wise mean (in the tensors' own dtype)."""
    return {k: (t / n).to(t.dtype) if t.is_floating_point() else t for k, t in total.items()}


def souped(r: Run) -> None:
    """Evaluate the ingredients, the uniform and the greedy soup; soup.csv; export soup.export, read back."""
    from .. import files
    from .recipe import weights_meta

    cfg = r.cfg
    refuse_adapters(r)
    sweep, jobs = ingredients(r)
    base = {k: v.detach() for k, v in r.model.state_dict().items()}  # names and shapes the ingredients must have
    monitor, mode = cfg.trainer.monitor, cfg.trainer.monitor_mode

    def weights(job: Path) -> dict[str, Any]:
        return read_tuned(job / "model.safetensors", base, cfg.source.allow_nonfinite, key=f"{KEY} job {job.name}")

    rows, total = [], None
    for job in jobs:
        state = weights(job)
        rows.append({"soup": "ingredient", "jobs": job.name, **evaluate_weights(r, state)})
        pick_best(rows[-1:], monitor, mode, "mode=soup")  # a monitor the evaluation does not measure: said at once
        log.info("ingredient %s  %s", job.name, _shown(rows[-1]))
        total = add(total, state)
    uniform = mean(total, len(jobs))
    rows.append({"soup": "uniform", "jobs": " ".join(job.name for job in jobs), **evaluate_weights(r, uniform)})
    log.info("uniform soup (%d)  %s", len(jobs), _shown(rows[-1]))
    ranked = sorted(rows[:len(jobs)], key=lambda row: row[monitor], reverse=_higher_is_better(monitor, mode))
    chosen, higher = [ranked[0]["jobs"]], _higher_is_better(monitor, mode)
    kept = weights(sweep / chosen[0])
    soup, best = mean(kept, 1), ranked[0]
    for row in ranked[1:]:
        trying = add(kept, weights(sweep / row["jobs"]))
        trial = mean(trying, len(chosen) + 1)
        got = evaluate_weights(r, trial)
        if got[monitor] >= best[monitor] if higher else got[monitor] <= best[monitor]:  # no worse on val: kept
            chosen.append(row["jobs"])
            kept, soup, best = trying, trial, got
    rows.append({"soup": "greedy", "jobs": " ".join(chosen), **evaluate_weights(r, soup)})
    log.info("greedy soup (%s)  %s", ", ".join(chosen), _shown(rows[-1]))
    write_table(r.run_dir / "soup.csv", rows)
    exported = rows[-1] if cfg.soup.export.value == "greedy" else rows[-2]
    state = soup if cfg.soup.export.value == "greedy" else uniform
    path = r.run_dir / "model.safetensors"
    files.save_weights(path, state, {**weights_meta(r), "source": str(r.summary["source"]),
                                     "weights": f"{exported['soup']} soup of {sweep}: jobs {exported['jobs']}"})
    from safetensors.torch import load_file

    again = evaluate_weights(r, load_file(str(path)))
    if any(again[k] != exported[k] for k in again):
        raise RuntimeError(f"bug: {path} gives {again} and the soup gave {exported}")
    scores = {k: v for k, v in exported.items() if k not in ("soup", "jobs")}
    best_single = ranked[0]
    r.summary.update(status="souped", **scores, soup={
        "sweep": str(sweep), "export": exported["soup"], "ingredients": [job.name for job in jobs],
        "greedy": chosen, "rows": rows, "best_ingredient": best_single["jobs"]})
    log.info("Soup of %d job(s) of %s: %s soup (%s) %s %.4f, best single job (%s) %.4f; weights (read back and checked) "
             "in %s, every row in soup.csv", len(jobs), sweep, exported["soup"], exported["jobs"], monitor,
             exported[monitor], best_single["jobs"], best_single[monitor], path)


def _higher_is_better(monitor: str, mode: str | None) -> bool:
    from ..training.monitor import monitor_mode

    return monitor_mode(monitor, mode) == "max"


def _shown(row: dict[str, Any]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in ("soup", "jobs"))
