"""trainer.max_minutes: a run past its time stops as a first SIGTERM stops it (exit 124, last.pt, resumable with
another limit), and one that hangs inside a step is ended hard from the timer; in a sweep the next job still runs."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from helpers import ROOT, compose_config, read_json, run_cli
from transfer_pipeline.errors import UserError

# tests/ for helpers.slow_digits_cnn, this folder for hangs_after below
ENV = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(Path(__file__).resolve().parent)])}


def hangs_after(hang_after: int = 2, **kwargs):
    """DigitsCNN whose training forwards hang (an hour's sleep) after `hang_after` of them: a step that never ends."""
    import time

    from transfer_pipeline.models import DigitsCNN

    class Hangs(DigitsCNN):
        calls = 0

        def forward(self, x):
            self.calls += self.training
            if self.calls > hang_after:
                time.sleep(3600)
            return super().forward(x)

    return Hangs(**kwargs)


def metric_rows(run):
    return list(csv.DictReader((run / "metrics.csv").open()))


def test_a_run_past_its_limit_stops_as_on_sigterm_and_resumes(tmp_path):
    run = tmp_path / "run"
    slow = ["model._target_=helpers.slow_digits_cnn", "+model.delay=0.05", "freeze.schedule=[]", "trainer.epochs=300",
            f"hydra.run.dir={run}"]
    out = run_cli(*slow, "trainer.max_minutes=0.25", env=ENV)
    assert out.returncode == 124, out.stdout[-2000:] + out.stderr[-2000:]
    s = read_json(run / "summary.json")
    assert (s["status"], s["error_type"]) == ("interrupted", "TimeLimit")
    assert "trainer.max_minutes=0.25 reached" in s["error"] and "trainer.resume=auto" in s["resume_command"]
    assert 15 <= s["seconds"] < 15 + 60  # stopped by itself after the step, not ended hard
    assert (run / "checkpoints" / "last.pt").is_file()
    assert "Traceback" not in out.stdout + out.stderr
    rows = len(metric_rows(run))

    # resumed with another limit (trainer.max_minutes may change on resume); the limit counts from this run's start
    again = run_cli(*slow, "trainer.max_minutes=0.2", "trainer.resume=auto", env=ENV)
    assert again.returncode == 124, again.stdout[-2000:] + again.stderr[-2000:]
    assert "trainer.resume: continuing from" in again.stdout + again.stderr
    assert read_json(run / "summary.json")["status"] == "interrupted"
    assert len(metric_rows(run)) > rows


def test_a_job_that_hangs_is_ended_hard_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "s"
    out = run_cli("-m", f"hydra.sweep.dir={sweep}", "model._target_=test_time_limit.hangs_after",
                  "+model.hang_after=2,1000000", "freeze.schedule=[]", "trainer.epochs=1", "trainer.max_minutes=0.25",
                  env=ENV, timeout=600)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]  # a job did not complete
    hung, fine = read_json(sweep / "0" / "summary.json"), read_json(sweep / "1" / "summary.json")
    assert (hung["status"], hung["error_type"]) == ("failed", "TimeLimit")
    assert "trainer.max_minutes=0.25 reached" in hung["error"] and "did not stop by itself" in hung["error"]
    assert 15 + 60 <= hung["seconds"] < 15 + 60 + 60
    assert fine["status"] == "completed"
    assert [r["status"] for r in csv.DictReader((sweep / "sweep_summary.csv").open())] == ["completed", "failed"]
    assert "Traceback" not in out.stdout + out.stderr


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_max_minutes_must_be_a_positive_number(value):
    with pytest.raises(UserError, match=r"trainer.max_minutes=.*must be a finite number of minutes > 0"):
        compose_config(f"trainer.max_minutes={value}")
    assert compose_config("trainer.max_minutes=0.5").trainer.max_minutes == 0.5
