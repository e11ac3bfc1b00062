"""Entry point: `python run.py [overrides]` (see README.md). Hydra stays in this file and schema.py.

Exit codes: 0 done; 2 a mistake in the config or the inputs (the message says which; a key or group
that Hydra cannot compose too); 130 / 143 interrupted by Ctrl-C / SIGTERM; 124 stopped by
trainer.max_minutes (as timeout(1)); 1 a bug (with its traceback). In a `-m` sweep a failed job does
not stop the others (nor does a bug, a time limit, or a killed process under hydra/launcher=parallel);
the exit code is 2 if any job did not complete, 1 if one of them failed with a bug. A sweep cut short
by Ctrl-C still writes its summary.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from transfer_pipeline.schema import register_configs, to_run_config

register_configs()
log = logging.getLogger("transfer_pipeline")
FAILED_JOBS: list[str] = []  # run folders of the sweep jobs that failed with a UserError
BUG_JOBS: list[str] = []  # ... and of those that failed with a bug (exit code 1, as a single run's)
RERUN_CODE_DIRS: list[str] = []  # where the re-run run found the person's own modules (its summary.json)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from transfer_pipeline.errors import ConfigOrigins, UserError
    from transfer_pipeline.run.lifecycle import Interrupted, run_job
    from transfer_pipeline.run.signals import TimeLimit

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    folder = rank_folder()  # a SLURM task started by the submitit launcher gets here without passing __main__
    if folder is not None:  # rank > 0: rank 0 writes the run folder and tells the story
        run_dir = Path(folder)
        log.setLevel(logging.WARNING)
    overrides = tuple(hydra_cfg.overrides.task)
    config_dirs = tuple(src.path for src in hydra_cfg.runtime.config_sources
                        if src.schema == "file" and src.provider in ("main", "command-line"))
    # your own code next to your configs (`_target_: my_data.splits` from a --config-dir), or in the directory
    # the run starts in (runtime.cwd: hydra.job.chdir=true has left it by now), as `python -m` would find it; a
    # --rerun adds the folders its run recorded (RERUN_CODE_DIRS)
    shipped = str(Path(__file__).resolve().parent / "conf")
    code_dirs = tuple(dict.fromkeys(d for d in (*RERUN_CODE_DIRS, *config_dirs, hydra_cfg.runtime.cwd)
                                    if d != shipped and Path(d).name != ".hydra"))
    for d in code_dirs:
        if d not in sys.path:
            sys.path.append(d)
    origins = ConfigOrigins({g: c for g, c in hydra_cfg.runtime.choices.items() if not g.startswith("hydra/")},
                            overrides, config_dirs, code_dirs)
    sweeping = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        resume = OmegaConf.select(cfg, "trainer.resume") is not None  # the schema checks the config in run_job
        summary = run_job(lambda: to_run_config(cfg), run_dir, origins, resume=resume)
    except UserError:  # already logged, and recorded in summary.json
        if sweeping:
            FAILED_JOBS.append(str(run_dir))
            return None
        sys.exit(2)
    except TimeLimit:  # trainer.max_minutes, recorded: not the person's Ctrl-C, so a sweep goes on to its next job
        if sweeping:
            FAILED_JOBS.append(str(run_dir))
            return None
        sys.exit(124)  # as timeout(1)
    except (Interrupted, KeyboardInterrupt) as e:
        if sweeping:  # the jobs that ran keep their results: the sweep's summary says so before the exit
            from transfer_pipeline.hydra_edge.sweep_summary import report

            report(Path(hydra_cfg.sweep.dir))
        sys.exit(128 + e.signum if isinstance(e, Interrupted) else 130)
    except Exception:  # a bug, its traceback logged and recorded: the other jobs of a sweep still run
        if not sweeping:
            raise
        BUG_JOBS.append(str(run_dir))
        return None
    from transfer_pipeline.hydra_edge.sweep_summary import objective

    return objective(summary)  # what a sweeper optimises


def rank_folder() -> str | None:
    """Under torchrun or srun, rank 0 writes the run folder; every other rank runs in a temporary folder of
    its own (removed when it exits), so no two processes write one file. Returns that folder."""
    from transfer_pipeline.training.distributed import launched

    where = launched()
    if where is None or where[0] == 0:
        return None
    if os.environ.get("TRANSFER_PIPELINE_RANK_FOLDER"):
        return os.environ["TRANSFER_PIPELINE_RANK_FOLDER"]
    import atexit
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix=f"transfer_pipeline_rank{where[0]}_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["TRANSFER_PIPELINE_RANK_FOLDER"] = folder
    return folder


# launcher / sweeper config -> (the plugin module it needs, the extra that installs it)
PLUGINS = {"hydra/launcher": {"slurm": "hydra_plugins.hydra_submitit_launcher",
                              "submitit_local": "hydra_plugins.hydra_submitit_launcher",
                              "submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
                              "parallel": "hydra_plugins.hydra_joblib_launcher",
                              "joblib": "hydra_plugins.hydra_joblib_launcher"},
           "hydra/sweeper": {"search": "hydra_plugins.hydra_optuna_sweeper",
                             "optuna": "hydra_plugins.hydra_optuna_sweeper"}}


def rerun_arguments(argv: list[str]) -> list[str]:
    """`python run.py --rerun <run folder> [overrides] [--trust-config]`: the run's own composed config
    (.hydra/config.yaml) as the config, i.e. Hydra's `--config-path <folder>/.hydra --config-name config`,
    with the run-folder guard. See `check_rerun` for what is checked first."""
    if "--rerun" not in argv:
        return argv
    trust = "--trust-config" in argv
    argv = [a for a in argv if a != "--trust-config"]
    i = argv.index("--rerun")
    given = argv[i + 1] if i + 1 < len(argv) else None
    folder = Path(given).resolve() if given else None
    if folder is None or not (folder / ".hydra" / "config.yaml").exists():
        print(f"run.py: --rerun needs a run folder holding .hydra/config.yaml (got {given or 'nothing'}); "
              "e.g. python run.py --rerun outputs/2026-12-01/10-00-00", file=sys.stderr)
        sys.exit(2)
    rest = argv[i + 2:]
    from transfer_pipeline.errors import UserError

    try:
        extra = check_rerun(folder, trust, rest)
    except UserError as e:
        print(f"run.py: {e}", file=sys.stderr)
        sys.exit(2)
    return [*argv[:i], "--config-path", str(folder / ".hydra"), "--config-name", "config", *extra, *rest]


# The run-folder guard claims the folder before Hydra writes `.hydra/` and `run.log` into it. conf/config.yaml
# installs it; a primary config of another origin (`--config-path <run>/.hydra`, `--rerun`, a person's own)
# may not, so such a command line gets it too (`++`: added, or set to the same where the config has it).
GUARD = "++hydra.callbacks.run_folder={_target_: transfer_pipeline.hydra_edge.callbacks.RunFolderGuard}"
OTHER_CONFIG = ("--config-path", "-cp", "--config-name", "-cn")
VALUED = {"--cfg", "-c", "--package", "-p", *OTHER_CONFIG, "--config-dir", "-cd", "--experimental-rerun"}
INFO_CHOICES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def with_guard(argv: list[str]) -> list[str]:
    """argv with GUARD among its overrides (Hydra's argparse takes the overrides as one run of positionals,
    so it goes just before the first of them), where the primary config is not conf/config.yaml."""
    if not any(a in OTHER_CONFIG or a.startswith(tuple(o + "=" for o in OTHER_CONFIG)) for a in argv[1:]):
        return argv
    for i in range(1, len(argv)):
        a, before = argv[i], argv[i - 1]
        if a.startswith("-") or before in VALUED or (before in ("--info", "-i") and a in INFO_CHOICES):
            continue
        return [*argv[:i], GUARD, *argv[i:]]
    return [*argv, GUARD]


def check_rerun(folder: Path, trust: bool, overrides: list[str]) -> list[str]:
    """Before a folder's config runs again. A Hydra config is code (`_target_: os.system` runs), so a config
    this user did not make (another owner, or not the one its run recorded in summary.json) needs
    --trust-config. The file is read with limits (size, no YAML aliases). Returns the overrides the re-run
    needs: a resumed run's `trainer.resume` is dropped (the re-run starts afresh in a new folder), and a hub
    source (`hf://org/name`) is pinned to the commit summary.json recorded (`hf://org/name@<commit>`)."""
    import hashlib
    import json

    from transfer_pipeline.errors import UserError
    from transfer_pipeline.files import read_yaml

    config = folder / ".hydra" / "config.yaml"
    loaded = read_yaml(config, "--rerun")
    if not isinstance(loaded, dict):
        raise UserError(f"--rerun: {config} holds no config (a YAML mapping); it is not a run folder's.")
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    summary = summary if isinstance(summary, dict) else {}
    if not trust:
        why = None
        if config.stat().st_uid != os.getuid():
            why = f"it belongs to another user (uid {config.stat().st_uid})"
        elif summary.get("config_sha256") != hashlib.sha256(config.read_bytes()).hexdigest():
            why = ("it is not the config its run recorded (summary.json has " +
                   ("another SHA-256: it was edited after the run" if summary.get("config_sha256") else "no SHA-256 of it")
                   + ")")
        if why is not None:
            raise UserError(f"--rerun: {config} was not written by a run of yours: {why}. A config names code to run "
                            "(every `_target_`), so running it runs whatever it names. Read it, then add "
                            "--trust-config to run it.")
    dirs = summary.get("code_dirs")
    if isinstance(dirs, list):
        RERUN_CODE_DIRS[:] = [d for d in dirs if isinstance(d, str)]
    from transfer_pipeline.sources.hub import rerun_pin

    pin = rerun_pin(loaded, summary, overrides)  # a hub source resolves to the commit the run used
    if pin:
        print(f"run.py: --rerun: {pin[0]} (the commit the run used)", file=sys.stderr)
    resumed = isinstance(loaded.get("trainer"), dict) and loaded["trainer"].get("resume") is not None
    if resumed and not any(o.lstrip("+~").startswith("trainer.resume=") for o in overrides):
        return ["trainer.resume=null", *pin]
    return pin


def check_plugins() -> None:
    """A shipped launcher asked for without its Hydra plugin: say what to install (Hydra would only say
    that a config is missing)."""
    import importlib.util

    for arg in sys.argv[1:]:
        group, _, choice = arg.partition("=")
        if group.lstrip("+") == "hydra/sweeper" and choice in ("search", "optuna"):
            from transfer_pipeline.hydra_edge.search import guard_optuna

            guard_optuna()  # every trial failed: a message and the summary, not a traceback from the plugin
        if group.lstrip("+") == "hydra/launcher" and choice in ("parallel", "joblib"):
            from transfer_pipeline.hydra_edge.parallel import guard_joblib

            guard_joblib(BUG_JOBS)  # a killed job's process ends only that job, not the sweep
        module = PLUGINS.get(group.lstrip("+"), {}).get(choice)
        if module is not None and (importlib.util.find_spec("hydra_plugins") is None
                                   or importlib.util.find_spec(module) is None):
            print(f"run.py: {arg} needs the Hydra plugin {module.split('.')[-1].replace('_', '-')}, which is not "
                  'installed here. Install it with: pip install -e ".[sweeps]"', file=sys.stderr)
            sys.exit(2)


def explain_config_mistakes() -> None:
    """Hydra's own errors about the command line (a misspelt key or group, a choice with no file, an override it
    cannot parse) are the person's mistakes: one message with the close names and exit 2, where Hydra prints its
    text without them and exits 1. Hydra runs each step of a command through `run_and_report`, which prints what
    it raises; the step is wrapped so that these errors are told here first. HYDRA_FULL_ERROR=1 keeps Hydra's
    full traceback. A Hydra without that function keeps its own messages."""
    import hydra._internal.utils as hydra_utils
    from hydra.errors import ConfigCompositionException, OverrideParseException, SearchPathException

    report = getattr(hydra_utils, "run_and_report", None)
    if report is None or getattr(report, "explains", False):
        return

    def run_and_report(func):  # noqa: ANN001, ANN202 - Hydra's signature
        def step():  # noqa: ANN202
            try:
                return func()
            except (ConfigCompositionException, OverrideParseException, SearchPathException) as e:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                print(f"run.py: {config_mistake(e)}", file=sys.stderr)
                sys.exit(2)
            except ValueError as e:  # `data=null`: Hydra's defaults list refuses it with a bare ValueError
                nulled = [a.split("=", 1)[0] for a in sys.argv[1:] if re.fullmatch(r"[\w/]+=null", a)]
                if not str(e).startswith("Config group override must be") or os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                group = nulled[0] if nulled else "<group>"
                print(f"run.py: {group}=null: a config group takes one of its files (conf/{group}/*.yaml) and cannot be "
                      f"null; leave the group out with '~{group}', or set its keys ({group}._target_=... for your own "
                      "code).", file=sys.stderr)
                sys.exit(2)
        return report(step)

    run_and_report.explains = True
    hydra_utils.run_and_report = run_and_report


def config_mistake(e: Exception) -> str:
    """The message for one of Hydra's composition errors: the key or group, and the close names."""
    import dataclasses

    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf import DictConfig
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    from transfer_pipeline.errors import close_names, not_a_key, not_an_option

    text = str(e).strip()
    cause = e.__cause__
    if isinstance(e, OverrideParseException):
        return f"cannot read the override {e.override!r}: {e.message.strip()}"
    if isinstance(e, MissingConfigException) and "/" in (e.missing_cfg_file or ""):
        group, _, choice = e.missing_cfg_file.rpartition("/")
        inside = re.match(r"In '([^']+)': ", text)
        where = f" (in the defaults list of {inside.group(1)})" if inside and typed_value(group) is None else ""
        if e.options:
            return not_an_option(group, choice, e.options, where)
        groups = config_groups()
        close = close_names(group, groups)
        return (f"{group}={choice}: there is no config group {group!r}{where}." +
                (f" Closest names: {', '.join(close)}; did you mean {close[0]}={choice}?" if close else
                 f" Groups: {', '.join(groups)}."))
    added = text.partition("\nTo append to your config use +")[2].strip()  # the override as typed
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.full_key and isinstance(cause.parent_node, DictConfig):
        known = [str(k) for k in cause.parent_node.keys()]
        parent = cause.full_key.rpartition(".")[0]
        if not parent:
            known += config_groups()
        message = not_a_key(cause.full_key, known, value=typed_value(cause.full_key))
        if not dataclasses.is_dataclass(cause.object_type):  # a free-form node (model ...): `+` adds the key
            message += f" To add it to {parent}, which takes any key: +{added}" if added else ""
        return message
    first = text.splitlines()[0] if text else type(e).__name__
    why = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else ""
    merging = re.match(r"Error merging override (.*)", first)
    message = f"{merging.group(1)}: {why}" if merging and why else " ".join([*text.splitlines()[:3], why]).strip()
    choices = re.match(r"Invalid value '(.*)', expected one of \[(.*)\]", why)
    if merging and choices:
        close = close_names(choices.group(1), [c.strip() for c in choices.group(2).split(",")])
        key = merging.group(1).partition("=")[0]
        message += f"; did you mean {key}={close[0]}?" if close else ""
    return message


def typed_value(key: str) -> str | None:
    """The value of `key` as the command line gave it (`1,2` of a sweep's `trainer.epochs=1,2`), if it did."""
    for arg in sys.argv[1:]:
        k, eq, value = arg.lstrip("+~").partition("=")
        if eq and k == key:
            return value
    return None


def config_groups() -> list[str]:
    """The config groups on Hydra's search path (conf/, a --config-dir), for close names."""
    from hydra.core.global_hydra import GlobalHydra

    try:
        return sorted(g for g in GlobalHydra.instance().config_loader().list_groups("") if g != "hydra")
    except Exception:  # noqa: BLE001 - only for hints: no Hydra set up, no hints
        return []


def refuse_sweeps_across_processes() -> None:
    from transfer_pipeline.errors import UserError
    from transfer_pipeline.training.distributed import launched

    try:
        several = launched() is not None
    except UserError as e:
        print(f"run.py: {e}", file=sys.stderr)
        sys.exit(2)
    if several and any(a in ("-m", "--multirun") or a.startswith("--multirun") for a in sys.argv[1:]):
        print("run.py: a -m sweep cannot run under torchrun or srun (each job would be every process's); run the "
              "sweep without them (hydra/launcher=slurm starts each job on SLURM), or one torchrun command per job.",
              file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    sys.argv = with_guard(rerun_arguments(sys.argv))
    explain_config_mistakes()
    check_plugins()
    refuse_sweeps_across_processes()
    if (folder := rank_folder()) is not None:  # before Hydra: it writes .hydra/ and run.log into its folder
        sys.argv = [a for a in sys.argv if not a.startswith("hydra.run.dir=")] + [f"hydra.run.dir={folder}"]
    try:
        main()
        from transfer_pipeline.hydra_edge.callbacks import INCOMPLETE_JOBS

        failed = list(dict.fromkeys([*FAILED_JOBS, *BUG_JOBS, *INCOMPLETE_JOBS]))  # here, and where a launcher ran them
        if failed:
            log.error("%d job(s) failed: %s (each folder's summary.json says why)", len(failed), ", ".join(failed))
            sys.exit(1 if BUG_JOBS else 2)
    finally:
        import gc

        # Every file is written and closed by now. The interpreter's last garbage collection would walk
        # each of the objects torch made (a quarter of a second on 2 cores); freezing them skips that walk
        # (exit handlers and finalizers still run).
        gc.freeze()
