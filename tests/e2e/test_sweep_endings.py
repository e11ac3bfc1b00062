"""However a sweep ends, its folder has a summary and the exit code says how: a bug in every job, every
Optuna trial failed, Ctrl-C in the middle."""

from __future__ import annotations

import csv
import signal

from helpers import ROOT, read_json, run_cli, start_cli, wait_for

ENV = {"PYTHONPATH": str(ROOT / "tests")}


def rows(sweep):
    return list(csv.DictReader((sweep / "sweep_summary.csv").open()))


def test_a_bug_in_every_job_runs_every_job_and_summarises(tmp_path):
    out = run_cli("-m", f"hydra.sweep.dir={tmp_path / 's'}", "model._target_=helpers.bug_in_training", "source=none",
                  "mapping=default", "freeze=none", "trainer.epochs=1", "seed=0,1,2", env=ENV)
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]  # a bug, as a single run's
    assert [r["status"] for r in rows(tmp_path / "s")] == ["failed"] * 3
    assert "3 job(s) failed" in out.stdout + out.stderr


def test_every_optuna_trial_failed_is_a_message_and_a_summary(tmp_path):
    out = run_cli("-m", "hydra/sweeper=search", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path / 's'}",
                  "trainer.epochs=0")
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "every trial failed, so there are no best parameters" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert [r["status"] for r in rows(tmp_path / "s")] == ["failed", "failed"]


def test_ctrl_c_in_a_sweep_still_writes_its_summary(tmp_path):
    sweep = tmp_path / "s"
    proc = start_cli("-m", f"hydra.sweep.dir={sweep}", "model._target_=helpers.slow_digits_cnn", "+model.delay=0.05",
                     "freeze.schedule=[]", "trainer.epochs=1,60", env=ENV)
    try:
        wait_for(lambda: (sweep / "1" / "metrics.csv").is_file(), timeout=240)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert [r["status"] for r in rows(sweep)] == ["completed", "interrupted"]
    assert read_json(sweep / "1" / "summary.json")["status"] == "interrupted"
