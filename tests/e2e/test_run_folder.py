"""The run folder tells the truth: every ending in summary.json and run.log, one live run per folder,
no silent reuse, the umask honoured, temporary files of killed writes cleaned. Real processes."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess

import pytest
from helpers import ROOT, read_json, run_cli, start_cli, wait_for

from transfer_pipeline.errors import UserError
from transfer_pipeline.schema import Mode

pytestmark = pytest.mark.slow
SLOW = ["model._target_=helpers.slow_digits_cnn", "trainer.epochs=60"]


def status(run_dir) -> str | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return None


def training(run_dir) -> bool:
    return (run_dir / "metrics.csv").is_file()


def test_summary_says_running_with_pid_and_start_until_the_end(run_pipeline, monkeypatch, tmp_path):
    from transfer_pipeline.run import recipe

    seen = {}

    def look(r):
        seen.update(read_json(r.run_dir / "summary.json"))

    monkeypatch.setitem(recipe.STEPS, Mode.plan, (*recipe.STEPS[Mode.plan], look))
    summary, run_dir = run_pipeline("mode=plan")
    assert seen["status"] == "running" and seen["pid"] == os.getpid() and seen["started_at"]
    assert summary["status"] == "planned" and read_json(run_dir / "summary.json")["ended_at"]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_end_as_interrupted(tmp_path, sig, code):
    proc = start_cli(*SLOW, f"hydra.run.dir={tmp_path}")
    wait_for(lambda: training(tmp_path))
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, out + err
    summary = read_json(tmp_path / "summary.json")
    assert summary["status"] == "interrupted" and signal.Signals(sig).name in summary["error"]
    assert "Run interrupted after" in (tmp_path / "run.log").read_text()
    assert "Traceback" not in out + err


def test_a_sigkilled_run_is_recognisable_and_its_folder_is_not_reused(tmp_path):
    proc = start_cli(*SLOW, f"hydra.run.dir={tmp_path}")
    wait_for(lambda: training(tmp_path))
    proc.kill()
    proc.communicate(timeout=30)
    summary = read_json(tmp_path / "summary.json")
    assert summary["status"] == "running" and summary["pid"] == proc.pid
    config = (tmp_path / ".hydra" / "config.yaml").read_bytes()
    out = run_cli(f"hydra.run.dir={tmp_path}", "trainer.epochs=1")
    assert out.returncode == 2 and "did not finish" in out.stderr and f"pid {proc.pid}" in out.stderr
    assert read_json(tmp_path / "summary.json") == summary  # untouched
    assert (tmp_path / ".hydra" / "config.yaml").read_bytes() == config  # Hydra did not overwrite it


def test_a_bug_shows_its_traceback_and_is_recorded_as_failed(tmp_path):
    out = run_cli("model._target_=helpers.boom_after", "~model.in_channels", "~model.num_classes",
                  "mapping=default", "freeze=none", "source=none", f"hydra.run.dir={tmp_path}",
                  env={"PYTHONPATH": str(ROOT / "tests")})
    assert out.returncode == 1 and "Traceback" in out.stderr and "boom: a bug in the model" in out.stderr
    summary = read_json(tmp_path / "summary.json")
    assert summary["status"] == "failed" and summary["error_type"] == "RuntimeError"
    log = (tmp_path / "run.log").read_text()
    assert "Traceback" in log and "Run failed after" in log


def test_a_bad_config_value_is_recorded_as_failed(tmp_path):
    out = run_cli("trainer.epochs=0", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2 and "trainer.epochs=0" in out.stdout
    summary = read_json(tmp_path / "summary.json")
    assert summary["status"] == "failed" and "trainer.epochs=0" in summary["error"]


def test_a_sweep_goes_on_after_a_failed_job_and_exits_non_zero(tmp_path):
    out = run_cli("-m", "source.path=/nowhere/missing.pt,pkg://transfer_pipeline/assets/digits_cnn_0to4.safetensors",
                  "trainer.epochs=1", "freeze.schedule=[]", f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 2, out.stdout + out.stderr
    assert status(tmp_path / "0") == "failed" and status(tmp_path / "1") == "completed"
    assert "1 job(s) failed" in out.stdout + out.stderr and str(tmp_path / "0") in out.stdout + out.stderr


def test_a_second_live_run_cannot_write_the_same_folder(tmp_path):
    first = start_cli(*SLOW, f"hydra.run.dir={tmp_path}")
    try:
        wait_for(lambda: training(tmp_path))
        before = (tmp_path / "summary.json").read_bytes()
        out = run_cli(f"hydra.run.dir={tmp_path}", "trainer.epochs=1")
        assert out.returncode == 2 and "in use by another run that is still going" in out.stderr
        assert f"pid {first.pid}" in out.stderr
        assert (tmp_path / "summary.json").read_bytes() == before
    finally:
        first.kill()
        first.communicate(timeout=30)


def test_a_finished_run_is_never_mixed_or_overwritten(tmp_path):
    assert run_cli("mode=plan", f"hydra.run.dir={tmp_path}").returncode == 0
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    out = run_cli("trainer.epochs=1", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2 and "already holds a finished run (status planned" in out.stderr
    assert "fresh folder" in out.stderr
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files


def test_a_sweep_into_a_used_sweep_folder_is_refused(tmp_path):
    args = ["-m", "mode=plan", "seed=0,1", f"hydra.sweep.dir={tmp_path}"]
    assert run_cli(*args).returncode == 0
    out = run_cli(*args)
    assert out.returncode == 2 and "already holds the jobs of another sweep" in out.stderr


def test_a_run_that_failed_before_training_is_replaced(tmp_path):
    assert run_cli("trainer.epochs=0", f"hydra.run.dir={tmp_path}").returncode == 2
    out = run_cli("mode=plan", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert status(tmp_path) == "planned" and "trainer.epochs=0" not in (tmp_path / "run.log").read_text()


def test_the_in_process_api_refuses_a_used_folder_too(run_pipeline, tmp_path):
    run_pipeline("mode=plan", run_dir=tmp_path / "x")
    with pytest.raises(UserError, match="already holds a finished run"):
        run_pipeline("mode=plan", run_dir=tmp_path / "x")


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_run_folder_files_honour_the_umask(tmp_path, umask, mode):
    cmd = f"umask {umask:o} && exec {subprocess.list2cmdline([os.sys.executable, str(ROOT / 'run.py')])} " \
          f"trainer.epochs=1 freeze.schedule=[] hydra.run.dir={tmp_path}"
    out = subprocess.run(["sh", "-c", cmd], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("summary.json", "metrics.csv", "load_report.json", "model.safetensors", "checkpoints/last.safetensors",
                 "run.log"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_temporary_files_of_a_killed_write_are_cleaned(tmp_path):
    (tmp_path / "checkpoints").mkdir(parents=True)
    (tmp_path / ".transfer_pipeline").write_text("run folder of transfer_pipeline\n")  # a folder this tool made
    stale = [tmp_path / ".metrics.csv.k2j3ab_9.tmp", tmp_path / "checkpoints" / ".last.safetensors.x9qq0z1m.tmp",
             tmp_path / ".predictions.csv.4242.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    out = run_cli("mode=plan", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert not any(p.exists() for p in stale)


def test_a_folder_this_tool_did_not_make_is_refused_untouched(tmp_path):
    """A person's folder (here: the one holding the source checkpoint) is never written into or cleaned."""
    import shutil

    from transfer_pipeline.models.digits import PRETRAINED_0TO4

    mine = tmp_path / "my_weights"
    (mine / "deeper").mkdir(parents=True)
    shutil.copy(PRETRAINED_0TO4, mine / "model.safetensors")
    (mine / "metrics.csv").write_text("my own numbers\n")
    (mine / "deeper" / ".notes.txt.abcdefgh.tmp").write_text("another program's temp file")
    (mine / ".draft.abcdefgh.tmp").write_text("another program's temp file")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in mine.rglob("*") if p.is_file()}
    out = run_cli(f"hydra.run.dir={mine}", f"source.path={mine / 'model.safetensors'}", "trainer.epochs=1",
                  "freeze.schedule=[]")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "is a folder this tool did not make (it holds" in out.stderr and "model.safetensors" in out.stderr
    assert "Traceback" not in out.stderr
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in mine.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in mine.iterdir()) == [".draft.abcdefgh.tmp", "deeper", "metrics.csv", "model.safetensors"]


def test_a_source_inside_the_run_folder_is_refused(tmp_path):
    """Even in a folder of this tool's (a run resumed or replaced there): the weights read are never an output."""
    import shutil

    from transfer_pipeline.models.digits import PRETRAINED_0TO4

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".transfer_pipeline").write_text("run folder of transfer_pipeline\n")
    shutil.copy(PRETRAINED_0TO4, run_dir / "model.safetensors")
    before = (run_dir / "model.safetensors").read_bytes()
    out = run_cli(f"hydra.run.dir={run_dir}", f"source.path={run_dir / 'model.safetensors'}")
    assert out.returncode == 2 and "is inside the run folder" in out.stdout + out.stderr, out.stdout + out.stderr
    assert (run_dir / "model.safetensors").read_bytes() == before


def test_a_sweep_folder_must_be_new_or_a_sweeps(tmp_path):
    afile = tmp_path / "a_file"
    afile.write_text("x")
    out = run_cli("-m", "mode=plan", "seed=0,1", f"hydra.sweep.dir={afile}")
    assert out.returncode == 2 and "exists and is not a folder" in out.stderr and "Traceback" not in out.stderr
    assert afile.read_text() == "x"
    run_dir = tmp_path / "a_run"
    assert run_cli("mode=plan", f"hydra.run.dir={run_dir}").returncode == 0
    out = run_cli("-m", "mode=plan", "seed=0,1", f"hydra.sweep.dir={run_dir}")
    assert out.returncode == 2 and "not a sweep folder" in out.stderr, out.stdout + out.stderr


def test_two_runs_started_in_the_same_second_get_their_own_default_folders(tmp_path):
    procs = [start_cli("mode=plan", cwd=tmp_path) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, out + err
    folders = sorted(p.parent for p in (tmp_path / "outputs").glob("*/*/summary.json"))
    assert len(folders) == 2 and all(status(f) == "planned" for f in folders)
