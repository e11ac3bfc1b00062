"""The run folder's lifecycle: one live run per folder, no silent reuse, no stale temporary files,
and never a folder that is not the tool's own.

`claim(run_dir)` is the first thing a run does (run.py's Hydra callback calls it before Hydra
writes `.hydra/` and `run.log`, the pipeline again, which is then a no-op):

- the folder must be new, empty, or one this tool made (its marker file `.transfer_pipeline`, or
  a run folder of an older version: a `summary.json` of ours). Anything else (a data folder, the
  folder the source checkpoint is in, `outputs/` itself, `/`) is refused untouched: a run writes
  `model.safetensors`, `metrics.csv`, `checkpoints/` ... and would overwrite a person's files of
  those names. A job folder of a sweep is the tool's when the sweep folder is (Hydra writes
  `.hydra/` and `run.log` there before the job starts);
- a lock (`flock` on `run_dir/.lock`, released by the kernel however the process ends) keeps a
  second live run out, with a message naming the first one's pid;
- a folder whose `summary.json` records another run is refused (pointing at a fresh folder),
  except a run that failed before it trained anything: that one is replaced, and the log says so;
- temporary files that a killed write of this tool left behind (`.<name>.<random>.tmp`, in the
  folder itself and its `checkpoints/`, never deeper) are removed.

Then `summary.json` says `running` with the pid and start time until the run ends (see lifecycle.run_job).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from ..errors import UserError

log = logging.getLogger(__name__)

LOCK = ".lock"
SUMMARY = "summary.json"
MARKER = ".transfer_pipeline"  # says: this tool made the folder (a run's, or a sweep's)
HYDRA_FILES = {".hydra", "run.log"}  # what Hydra writes in a sweep's job folder before the job claims it
# `.name.XXXXXXXX.tmp` (files.atomic_path: 8 random characters) or `.name.PID.tmp` (a streamed write)
TEMP = re.compile(r"\..+\.(?:[a-z0-9_]{8}|\d+)\.tmp")
TEMP_FOLDERS = ("", "checkpoints")  # where the tool writes; clean-up looks nowhere else
# what a failed run may have written and still count as "nothing trained": replacing it loses nothing
REPLACEABLE = {SUMMARY, "load_report.json", "run.log", LOCK, ".hydra", ".summary.reserve"}
_held: dict[Path, int] = {}  # run folders this process holds: resolved path -> lock file descriptor


def claim(run_dir: Path, resume: bool = False) -> None:
    """Make `run_dir` this process's run folder, or raise UserError saying why it cannot be.

    `resume` (trainer.resume is set): a folder whose run stopped before its end and left a
    checkpoints/last.pt may be continued; the resume step then checks that it fits the config.
    """
    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        return
    check_ours(run_dir, "hydra.run.dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        mark(run_dir, "run")
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UserError(f"hydra.run.dir: cannot use {run_dir} as the run folder ({e.strerror or e}). "
                        "Choose a folder you can write, e.g. hydra.run.dir=outputs/my_run.") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        pid = _read_pid(run_dir / LOCK)
        raise UserError(f"hydra.run.dir: {run_dir} is in use by another run that is still going (pid {pid}). "
                        "Give this run its own folder (hydra.run.dir=...), or wait for that one to end.") from None
    try:
        _check_previous(run_dir, resume)
    except BaseException:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[run_dir] = fd
    removed = remove_temp_files(run_dir)
    if removed:
        log.info("Removed %d temporary file(s) an interrupted write left in %s", removed, run_dir)


def check_ours(folder: Path, key: str, kind: str = "run") -> None:
    """Refuse (UserError) a `folder` that exists and is not this tool's `kind` of folder ("run" or
    "sweep"): not a folder, or holding files that no run of this tool wrote, or the other kind.
    Reads only the folder's listing (and its marker or summary.json)."""
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir():
        raise UserError(f"{key}: {folder} exists and is not a folder. Give a new folder ({key}=outputs/my_{kind}) "
                        "or remove that file.")
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError as e:
        raise UserError(f"{key}: cannot read {folder} ({e.strerror or e}). Choose a folder you can write, e.g. "
                        f"{key}=outputs/my_{kind}.") from None
    if not names:
        return
    if MARKER in names:
        made = _marker_kind(folder)
        if made == kind:
            return
        raise UserError(f"{key}: {folder} is a {made or 'damaged'} folder of this tool, not a {kind} folder. Give a "
                        f"new folder ({key}=outputs/my_{kind}; the default is a new timestamped one).")
    if kind == "run" and (_older_run(folder, names) or (set(names) <= HYDRA_FILES and _in_our_sweep(folder))):
        return  # a run folder of an older version; or a job folder of our sweep (Hydra wrote its config and log first)
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    raise UserError(f"{key}: {folder} is a folder this tool did not make (it holds {shown}). A run writes "
                    "model.safetensors, metrics.csv, summary.json, checkpoints/ ... into its folder and would "
                    f"overwrite files of those names, so it only uses a new or empty folder or one it made. Give "
                    f"a new folder ({key}=outputs/my_{kind}; the default is a new timestamped one).")


def _older_run(folder: Path, names: list[str]) -> bool:
    """A run folder made before the marker existed: a summary.json of ours beside a `.hydra/`."""
    if SUMMARY not in names or ".hydra" not in names:
        return False
    before = previous_summary(folder)
    return before is not None and {"status", "started_at"} <= set(before)


def _marker_kind(folder: Path) -> str | None:
    try:
        return (folder / MARKER).read_text().split(" ", 1)[0]
    except OSError:
        return None


def _in_our_sweep(folder: Path) -> bool:
    return any(_marker_kind(parent) == "sweep" for parent in folder.parents)


def mark(folder: Path, kind: str) -> None:
    """Leave the marker that makes `folder` this tool's (kept if there: a resumed run's folder is still a run's)."""
    path = folder / MARKER
    if not path.exists():
        path.write_text(f"{kind} folder of transfer_pipeline: runs may write and clean up here\n")


def check_source_outside(files: list[Path], run_dir: Path, where: str = "source.path") -> None:
    """The source checkpoint can never be an output: refuse source files inside the run folder."""
    run_dir = Path(run_dir).resolve()
    inside = [f for f in files if run_dir in Path(f).resolve().parents]
    if inside:
        raise UserError(f"{where}: {inside[0]} is inside the run folder {run_dir}, where this run writes its "
                        "own files (model.safetensors, checkpoints/ ...) and could replace the weights it reads. "
                        "Give the run another folder (hydra.run.dir=...), or copy the checkpoint elsewhere.")


RESERVE = ".summary.reserve"  # blocks and an inode kept free for the last summary.json of a run on a full disk
RESERVE_BYTES = 64 << 10


def reserve_space(run_dir: Path) -> None:
    """Take the room the last record needs now, while there is some (a disk can fill during the run)."""
    with open(Path(run_dir) / RESERVE, "wb") as f:
        f.write(bytes(RESERVE_BYTES))  # real blocks, not a sparse file


def free_reserve(run_dir: Path) -> bool:
    """Give the reserved room back (before the last write, when the disk is full; always at the end)."""
    try:
        (Path(run_dir) / RESERVE).unlink()
        return True
    except FileNotFoundError:
        return False


def release(run_dir: Path) -> None:
    fd = _held.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def previous_summary(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {"status": "unreadable"}
    except (OSError, ValueError):
        return {"status": "unreadable"}


def _check_previous(run_dir: Path, resume: bool = False) -> None:
    before = previous_summary(run_dir)
    if before is None:
        return
    status = before.get("status", "unknown")
    if resume and status in ("running", "interrupted", "failed") and has_last(run_dir):
        log.info("Continuing the %s run in %s (trainer.resume)", "killed" if status == "running" else status, run_dir)
        return
    if resume and status == "completed":
        raise UserError(f"trainer.resume: the run in {run_dir} completed; there is nothing to resume. Start a fresh "
                        "run (drop trainer.resume, or give another hydra.run.dir).")
    left = sorted(p.name for p in run_dir.iterdir() if p.name not in REPLACEABLE | {MARKER} and not _is_temp(p.name))
    if status == "failed" and not left:
        for name in (SUMMARY, "load_report.json", "run.log"):
            (run_dir / name).unlink(missing_ok=True)
        log.info("Replacing a run that failed before it trained anything (%s): %s", run_dir,
                 str(before.get("error", ""))[:200])
        return
    if status == "running":
        what = (f"a run that did not finish (summary.json still says running: pid {before.get('pid', '?')}, "
                f"started {before.get('started_at', '?')}; it was killed or crashed)")
    else:
        what = f"a finished run (status {status}{', started ' + str(before['started_at']) if 'started_at' in before else ''})"
    can_resume = status in ("running", "interrupted", "failed") and has_last(run_dir)
    hint = " To continue it, add trainer.resume=auto." if can_resume else ""
    raise UserError(f"hydra.run.dir: {run_dir} already holds {what}. A new run there would mix with its files or "
                    "overwrite them: give the new run a fresh folder (hydra.run.dir=...; the default is a new "
                    f"timestamped folder), or delete that one.{hint}")


def has_last(run_dir: Path) -> bool:
    """checkpoints/last.pt, or last.dcp/ (trainer.strategy=fsdp): a stopped run there can resume."""
    return (run_dir / "checkpoints" / "last.pt").is_file() or (run_dir / "checkpoints" / "last.dcp").is_dir()


def _is_temp(name: str) -> bool:
    return TEMP.fullmatch(name) is not None


def remove_temp_files(run_dir: Path) -> int:
    """The temporary files of this tool's writes that never finished (files.atomic_path), in the run
    folder and its checkpoints/ only: never recursively, never anything of another name."""
    removed = 0
    for sub in TEMP_FOLDERS:
        folder = Path(run_dir) / sub
        if not folder.is_dir() or folder.is_symlink():
            continue
        for p in folder.iterdir():
            if _is_temp(p.name) and p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
                removed += 1
    return removed


def _read_pid(path: Path) -> str:
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"
