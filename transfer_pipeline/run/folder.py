"""The run folder's lifecycle: one live run per folder, no silent reuse, no stale temporary files.

`claim(run_dir)` is the first thing a run does (run.py's Hydra callback calls it before Hydra
writes `.hydra/` and `run.log`, the pipeline again, which is then a no-op):

- a lock (`flock` on `run_dir/.lock`, released by the kernel however the process ends) keeps a
  second live run out, with a message naming the first one's pid;
- a folder whose `summary.json` records another run is refused (pointing at a fresh folder),
  except a run that failed before it trained anything: that one is replaced, and the log says so;
- temporary files that a killed write left behind (`.<name>.<random>.tmp`) are removed.

Then `summary.json` says `running` with the pid and start time until the run ends (see lifecycle.run_job).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..errors import UserError

log = logging.getLogger(__name__)

LOCK = ".lock"
SUMMARY = "summary.json"
# what a failed run may have written and still count as "nothing trained": replacing it loses nothing
REPLACEABLE = {SUMMARY, "load_report.json", "run.log", LOCK, ".hydra"}
_held: dict[Path, int] = {}  # run folders this process holds: resolved path -> lock file descriptor


def claim(run_dir: Path, resume: bool = False) -> None:
    """Make `run_dir` this process's run folder, or raise UserError saying why it cannot be.

    `resume` (trainer.resume is set): a folder whose run stopped before its end and left a
    checkpoints/last.pt may be continued; the resume step then checks that it fits the config.
    """
    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
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
    if resume and status in ("running", "interrupted", "failed") and (run_dir / "checkpoints" / "last.pt").is_file():
        log.info("Continuing the %s run in %s (trainer.resume)", "killed" if status == "running" else status, run_dir)
        return
    if resume and status == "completed":
        raise UserError(f"trainer.resume: the run in {run_dir} completed; there is nothing to resume. Start a fresh "
                        "run (drop trainer.resume, or give another hydra.run.dir).")
    left = sorted(p.name for p in run_dir.iterdir() if p.name not in REPLACEABLE and not _is_temp(p.name))
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
    can_resume = status in ("running", "interrupted", "failed") and (run_dir / "checkpoints" / "last.pt").is_file()
    hint = " To continue it, add trainer.resume=auto." if can_resume else ""
    raise UserError(f"hydra.run.dir: {run_dir} already holds {what}. A new run there would mix with its files or "
                    "overwrite them: give the new run a fresh folder (hydra.run.dir=...; the default is a new "
                    f"timestamped folder), or delete that one.{hint}")


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def remove_temp_files(run_dir: Path) -> int:
    """The `.name.XXXX.tmp` files of writes that never finished (outputs.atomic_write_bytes)."""
    removed = 0
    for p in Path(run_dir).rglob(".*.tmp"):
        if p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def _read_pid(path: Path) -> str:
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"
