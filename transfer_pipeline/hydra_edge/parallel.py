"""`hydra/launcher=parallel`: Hydra's joblib launcher, where a job whose process is killed ends only itself.

joblib runs the jobs in loky worker processes. When one of them dies (SIGKILL, the kernel's
out-of-memory killer), loky calls its pool broken, SIGKILLs every other worker and raises
TerminatedWorkerError: the healthy jobs are cut off (their summary.json stays `running`), the
jobs not started yet never run, and the sweep ends in a traceback without its summary. Hydra
takes launchers only from its own plugin package, so a subclass of ours cannot be named in
conf/hydra/launcher/parallel.yaml; `guard_joblib` replaces the plugin's launch at run time instead
(as search.py does for the Optuna sweeper). Its launch runs the jobs as the plugin does (loky,
`execute_job`), and after such a break looks at each unfinished job's folder:

- a job that ended by itself keeps its result;
- the job whose process died first (it was dead before loky killed the rest: `TORN_DOWN` holds
  the pids loky killed) is recorded `failed`, saying its process was killed by a signal, and is
  not run again (an out-of-memory kill would only happen again);
- a job loky killed because of it continues from its checkpoints/last.pt (trainer.resume=auto:
  the run it would have been), or starts again when it had trained nothing yet; at most once;
- a job that never started runs.

The jobs left then run side by side again. A job is run again at most once after it was cut off
(a second cut records it `failed`), so a sweep whose processes keep dying still ends.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

KILLED = "Killed"  # summary.json's error_type of a job whose process was killed
NOT_BUGS = ("UserError", "DiskFull", "TimeLimit", KILLED)  # failed jobs' error_types that are not bugs
TORN_DOWN: set[int] = set()  # pids of the workers loky killed because another one had died


def guard_joblib(bug_jobs: list[str]) -> None:
    """Replace the plugin's launch once (run.py calls this when the command names the launcher). The folders
    of jobs that failed with a bug are added to `bug_jobs`: they ran in other processes, and run.py's exit
    code (1 for a bug) is decided here."""
    try:
        from hydra_plugins.hydra_joblib_launcher import _core
    except ImportError:
        return  # not installed: run.py's plugin check says what to install
    if getattr(_core.launch, "guarded", False):
        return
    _watch_teardown()

    @functools.wraps(_core.launch)
    def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
        returns = launch_jobs(launcher, {initial_job_idx + i: list(o) for i, o in enumerate(job_overrides)})
        bug_jobs.extend(str(folder) for folder in map(_folder, returns.values()) if folder and _bug(folder))
        return [returns[i] for i in sorted(returns)]

    launch.guarded = True  # type: ignore[attr-defined]
    _core.launch = launch  # JoblibLauncher.launch calls it (Hydra's plugin scan executes that class's module again)


def launch_jobs(launcher: Any, jobs: dict[int, list[str]]) -> dict[int, Any]:
    """Run `jobs` ({job number: overrides}) side by side until each has ended; {job number: JobReturn}."""
    from hydra.core.utils import configure_log, filter_overrides, setup_globals

    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    log.info("Launching %d jobs, %s at a time, sweep output dir: %s", len(jobs), launcher.joblib.get("n_jobs"),
             launcher.config.hydra.sweep.dir)
    for idx, overrides in jobs.items():
        log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
    returns: dict[int, Any] = {}
    restarted: set[int] = set()
    todo = dict(jobs)
    while todo and not _run(launcher, todo, returns):
        todo = _after_break(launcher, {i: o for i, o in todo.items() if i not in returns}, returns, restarted)
    return returns


def _run(launcher: Any, todo: dict[int, list[str]], returns: dict[int, Any]) -> bool:
    """One joblib.Parallel over `todo`, each JobReturn into `returns` as it comes; False when a worker died."""
    from hydra.core.singleton import Singleton
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
    from joblib import Parallel, delayed
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    options = {**launcher.joblib, "backend": "loky"}  # as the plugin: the threading backend does not work with Hydra
    process_joblib_cfg(options)
    state = Singleton.get_state()
    TORN_DOWN.clear()  # of this pool only: a pid may come again
    done = Parallel(**options, return_as="generator_unordered")(
        delayed(_numbered)(idx, overrides, launcher.hydra_context, launcher.config, launcher.task_function, state)
        for idx, overrides in todo.items())
    try:
        for idx, ret in done:
            returns[idx] = ret
    except TerminatedWorkerError:
        return False
    return True


def _numbered(idx: int, *args: Any) -> tuple[int, Any]:
    """The plugin's job (in a worker), with its number: results come back in the order jobs end."""
    from hydra_plugins.hydra_joblib_launcher._core import execute_job

    return idx, execute_job(idx, *args)


def _after_break(launcher: Any, unfinished: dict[int, list[str]], returns: dict[int, Any],
                 restarted: set[int]) -> dict[int, list[str]]:
    """What became of each job the broken pool left unfinished (see the module's docstring); returns those to
    run again, {job number: overrides}."""
    from ..run.folder import previous_summary

    again: dict[int, list[str]] = {}
    for idx, overrides in unfinished.items():
        folder = _job_dir(launcher, idx, overrides)
        summary = previous_summary(folder)
        if summary is not None and summary.get("status") != "running":
            returns[idx] = _ended(overrides, folder, summary)  # it ended by itself
            continue
        if not folder.exists():  # never started
            again[idx] = overrides
            continue
        if summary is not None and summary.get("pid") not in TORN_DOWN:
            why = (f"its process (pid {summary.get('pid')}) was killed by a signal (SIGKILL, or the kernel's "
                   "out-of-memory killer: `dmesg` says which); the sweep's other jobs went on, this one is not run "
                   "again")
        elif idx in restarted:
            why = "it was cut off twice when another job's process was killed, and is not run a third time"
        else:
            restarted.add(idx)
            continued = _continued(folder, overrides)
            if continued is not None:
                log.warning("Job %d (%s) was cut off when another job's process was killed: %s", idx, folder,
                            "continuing it from checkpoints/last.pt" if continued != overrides else "starting it again")
                again[idx] = continued
                continue
            why = ("it was cut off when another job's process was killed, and left files of its run but no "
                   "checkpoints/last.pt to continue from")
        returns[idx] = _ended(overrides, folder, _record_failed(folder, summary or {}, overrides, why))
    return again


def _continued(folder: Path, overrides: list[str]) -> list[str] | None:
    """The overrides that take a cut-off job on in its folder: from its last.pt (trainer.resume=auto, which
    run/folder.py accepts for a killed run), or afresh where it had written only what a run writes before
    training (those files are removed, so the folder is as new); None when neither is possible."""
    from ..run.folder import MARKER, REPLACEABLE

    if (folder / "checkpoints" / "last.pt").is_file():
        return [o for o in overrides if not o.lstrip("+~").startswith("trainer.resume=")] + ["trainer.resume=auto"]
    names = {p.name for p in folder.iterdir()}
    if not names <= REPLACEABLE | {MARKER}:
        return None
    for name in names - {".hydra", MARKER}:  # .hydra/ is Hydra's, written again when the job starts
        (folder / name).unlink()
    return overrides


def _record_failed(folder: Path, summary: dict[str, Any], overrides: list[str], why: str) -> dict[str, Any]:
    """summary.json of a job that is not run again: `failed`, why, and how to continue it by hand."""
    from datetime import datetime, timezone

    from ..files import write_json

    summary = {**summary, "status": "failed", "error_type": KILLED, "error": why,
               "ended_at": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")}
    if (folder / "checkpoints" / "last.pt").is_file():
        from ..run.signals import resume_command

        summary["resume_command"] = resume_command(overrides, folder)
        summary["error"] += f". checkpoints/last.pt lets it continue: {summary['resume_command']}"
    write_json(folder / "summary.json", summary)
    log.error("Job %s (%s) failed: %s", folder.name, folder, summary["error"])
    return summary


def _ended(overrides: list[str], folder: Path, summary: dict[str, Any]) -> Any:
    """The JobReturn of a job whose own came back with the broken pool: what run.py's main would have returned."""
    from hydra.core.utils import JobReturn, JobStatus

    from .sweep_summary import DONE, objective

    value = objective(summary) if summary.get("status") in DONE else None
    return JobReturn(overrides=overrides, working_dir=str(folder), status=JobStatus.COMPLETED, _return_value=value)


def _job_dir(launcher: Any, idx: int, overrides: list[str]) -> Path:
    """Job `idx`'s folder, worked out as the plugin's execute_job and Hydra's run_job do in the worker."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(config):
        config.hydra.job.id = f"{config.hydra.job.name}_{idx}"
        config.hydra.job.num = idx
    before = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(config)  # for `${hydra:...}` in the folder's name
    try:
        return Path(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir)).resolve()
    finally:
        HydraConfig.instance().cfg = before


def _folder(ret: Any) -> Path | None:
    """A JobReturn's job folder: Hydra records it in the job's hydra config; ours (_ended) as working_dir."""
    if ret.hydra_cfg is not None:
        return Path(ret.hydra_cfg.hydra.runtime.output_dir)
    return Path(ret.working_dir) if ret.working_dir else None


def _bug(folder: Path) -> bool:
    from ..run.folder import previous_summary

    summary = previous_summary(folder) or {}
    return summary.get("status") == "failed" and summary.get("error_type") not in NOT_BUGS


def _watch_teardown() -> None:
    """Record in TORN_DOWN the workers loky kills because its pool broke: still alive when it starts to (the
    worker that broke it is dead by then), so their jobs did nothing wrong and are continued."""
    try:
        from joblib.externals.loky.process_executor import _ExecutorManagerThread
    except ImportError:  # another loky: every cut-off job then counts as killed (failed, the others still run)
        return
    plain = _ExecutorManagerThread.terminate_broken

    @functools.wraps(plain)
    def terminate_broken(self: Any, bpe: BaseException) -> None:
        TORN_DOWN.update(p.pid for p in list(self.processes.values()) if p.exitcode is None)
        plain(self, bpe)

    _ExecutorManagerThread.terminate_broken = terminate_broken
