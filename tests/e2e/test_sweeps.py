"""The end of a sweep: a failed job does not stop the others, and the sweep folder gets its summary."""

from __future__ import annotations

import csv
import json

from helpers import run_cli

SHIPPED = "pkg://transfer_pipeline/assets/digits_cnn_0to4.safetensors"


def test_a_sweep_with_a_failing_job_writes_its_summary_and_exits_2(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("-m", "trainer.epochs=2", "freeze.schedule=[]", "optim.lr=0.01,0.03",
                     f"source.path=/missing.pt,{SHIPPED}", f"hydra.sweep.dir={sweep}", "trainer.progress=false")
    assert result.returncode == 2, result.stderr[-2000:]
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert len(rows) == 4 and (sweep / "sweep_summary.png").stat().st_size > 1000
    assert {"job", "optim.lr", "source.path", "status", "best", "error", "run_dir"} <= set(rows[0])
    done = [r for r in rows if r["status"] == "completed"]
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(done) == 2 and len(failed) == 2
    assert rows[:2] == sorted(done, key=lambda r: -float(r["best"]))  # best val_acc first, failed last
    assert all(r["source.path"] == "/missing.pt" and "no such file" in r["error"] for r in failed)
    assert {r["source.path"] for r in done} == {SHIPPED}  # as typed, not Hydra-escaped
    for r in done:
        summary = json.loads((sweep / r["job"] / "summary.json").read_text())
        assert float(r["best"]) == summary["best_val_acc"]
    out = result.stdout + result.stderr
    assert "Sweep of 4 job(s), best val_acc first" in out and "2 job(s) did not complete" in out


def test_a_sweep_of_plans_ends_well(tmp_path):
    result = run_cli("-m", "mode=plan", "seed=0,1", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stdout[-2000:]
    assert [r["status"] for r in csv.DictReader((tmp_path / "sweep_summary.csv").open())] == ["planned", "planned"]


def test_the_summary_reads_what_the_job_folders_hold(tmp_path):
    from transfer_pipeline.hydra_edge.sweep_summary import collect, ranked, write

    for i, (lr, summary) in enumerate([("0.1", {"status": "completed", "monitor": "val_loss", "best_val_loss": 0.5}),
                                       ("0.2", {"status": "completed", "monitor": "val_loss", "best_val_loss": 0.3}),
                                       ("0.3", None)]):
        job = tmp_path / str(i)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- optim.lr={lr}\n- trainer.epochs=2\n")
        if summary is not None:
            (job / "summary.json").write_text(json.dumps(summary))
    swept, rows = collect(tmp_path)
    assert swept == ["optim.lr"]  # trainer.epochs is the same in every job: no column
    assert [r["optim.lr"] for r in ranked(rows)] == ["0.2", "0.1", "0.3"]  # a loss: lowest first; no value last
    assert rows[2]["status"] == "missing"
    text, incomplete = write(tmp_path)
    assert "1 job(s) did not complete: 2 (missing)" in text and (tmp_path / "sweep_summary.csv").is_file()
    assert incomplete == [str(tmp_path / "2")]


def test_the_shipped_sweep_experiments_run_and_compare_their_jobs(tmp_path):
    result = run_cli("-m", "experiment=sweep_where_to_freeze", "trainer.epochs=2", f"hydra.sweep.dir={tmp_path}",
                     "trainer.progress=false")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "sweep_summary.csv").open()))
    assert sorted(r["freeze.until"] for r in rows) == ["block1", "block2", "null", "stem"]
    assert all(r["status"] == "completed" for r in rows)
    for r in rows:  # each job froze what its row says
        summary = json.loads((tmp_path / r["job"] / "summary.json").read_text())
        assert (summary["frozen_params"] == 0) == (r["freeze.until"] == "null")


def test_jobs_side_by_side_with_the_parallel_launcher(tmp_path):
    result = run_cli("-m", "hydra/launcher=parallel", "trainer.epochs=1", "freeze.schedule=[]",
                     f"source.path=/missing.pt,{SHIPPED}", "device=${job_device:}", f"hydra.sweep.dir={tmp_path}",
                     "trainer.progress=false")
    # the failing job ran in a worker process: the exit code still says so
    assert result.returncode == 2, result.stderr[-2000:]
    rows = {r["job"]: r for r in csv.DictReader((tmp_path / "sweep_summary.csv").open())}
    assert rows["0"]["status"] == "failed" and rows["1"]["status"] == "completed"
    assert json.loads((tmp_path / "1" / "summary.json").read_text())["device"] == "cpu"  # no GPU here


def test_job_device_divides_the_gpus_between_jobs(monkeypatch):
    import pytest

    from transfer_pipeline.errors import UserError
    from transfer_pipeline.schema.resolvers import job_device

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    assert [job_device(k) for k in range(5)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert job_device(3) == "cpu"
    with pytest.raises(UserError, match="job_device"):
        job_device("x")


def test_the_optuna_search_optimises_the_best_value(tmp_path):
    import yaml

    result = run_cli("-m", "hydra/sweeper=search", "hydra.sweeper.n_trials=3", "trainer.epochs=1",
                     "freeze.schedule=[]", f"hydra.sweep.dir={tmp_path}", "trainer.progress=false")
    assert result.returncode == 0, result.stderr[-2000:]
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    rows = list(csv.DictReader((tmp_path / "sweep_summary.csv").open()))
    assert len(rows) == 3 and {"optim.lr", "freeze.until", "optim.layer_decay"} <= set(rows[0])
    assert best["best_value"] == max(float(r["best"]) for r in rows)
    assert all(0.0003 <= float(r["optim.lr"]) <= 0.03 for r in rows)
