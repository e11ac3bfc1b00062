"""hydra/launcher=parallel: a job whose process is killed (SIGKILL, as the out-of-memory killer sends) ends only
itself. joblib's loky kills every other worker then; the jobs it cut off continue from their last.pt, the jobs not
started run, the killed one is recorded failed, and the sweep ends with its summary and exit code 2."""

from __future__ import annotations

import csv
import json
import os
import signal

from helpers import ROOT, read_json, run_cli, start_cli, wait_for

ENV = {"PYTHONPATH": str(ROOT / "tests")}


def running_with_checkpoint(job) -> bool:
    try:
        return json.loads((job / "summary.json").read_text())["status"] == "running" and \
            (job / "checkpoints" / "last.pt").is_file()
    except (OSError, ValueError):
        return False


def test_a_killed_job_ends_only_itself(tmp_path):
    sweep = tmp_path / "s"
    proc = start_cli("-m", "hydra/launcher=parallel", f"hydra.sweep.dir={sweep}",
                     "model._target_=helpers.slow_digits_cnn", "+model.delay=0.05", "freeze.schedule=[]",
                     "trainer.epochs=4", "seed=0,1,2", env=ENV)
    try:
        # jobs 0 and 1 side by side (n_jobs: 2), each past its first epoch; job 2 waits for a free worker
        wait_for(lambda: running_with_checkpoint(sweep / "0") and running_with_checkpoint(sweep / "1"), timeout=300)
        killed = read_json(sweep / "0" / "summary.json")["pid"]
        os.kill(killed, signal.SIGKILL)
        out, err = proc.communicate(timeout=400)
    finally:
        proc.kill()
    assert proc.returncode == 2, out[-3000:] + err[-3000:]  # a job failed; not a bug
    assert "Traceback" not in out + err
    first = read_json(sweep / "0" / "summary.json")
    assert (first["status"], first["error_type"]) == ("failed", "Killed")
    assert f"pid {killed}) was killed by a signal" in first["error"] and "trainer.resume=auto" in first["error"]
    cut_off = read_json(sweep / "1" / "summary.json")  # torn down with it by loky, continued from its last.pt
    assert (cut_off["status"], cut_off["epochs"]) == ("completed", 4)
    assert "continuing it from checkpoints/last.pt" in out + err
    assert read_json(sweep / "2" / "summary.json")["status"] == "completed"  # never started when job 0 died
    rows = {r["job"]: r["status"] for r in csv.DictReader((sweep / "sweep_summary.csv").open())}
    assert rows == {"0": "failed", "1": "completed", "2": "completed"}


def test_a_bug_in_a_parallel_job_is_exit_code_1(tmp_path):
    """The jobs ran in other processes: the exit code is read from their folders (a bug, as a single run's)."""
    out = run_cli("-m", "hydra/launcher=parallel", f"hydra.sweep.dir={tmp_path / 's'}",
                  "model._target_=helpers.bug_in_training", "source=none", "mapping=default", "freeze=none", "trainer.epochs=1", "seed=0,1", env=ENV)
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    assert [r["status"] for r in csv.DictReader((tmp_path / "s" / "sweep_summary.csv").open())] == ["failed"] * 2
