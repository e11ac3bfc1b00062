"""trainer.strategy=fsdp checkpoints for resume: checkpoints/last.dcp (training/sharded_checkpoint.py), written by
every rank with torch.distributed.checkpoint. A 2-process run stopped by SIGTERM resumes with its printed command
bit for bit; on 1 process it reshards and goes on close; a damaged or missing last.dcp is one UserError naming it;
a save that never finished (last.dcp.partial/ left behind) does not get in the way."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import ROOT, read_json, run_cli, wait_for
from transfer_pipeline.errors import UserError

COMMON = ("device=cpu", "trainer.strategy=fsdp", "freeze.bn=frozen", "trainer.epochs=2", "trainer.progress=false",
          "model._target_=helpers.slow_digits_cnn", "+model.delay=0.05", "trainer.limit_train_batches=24",
          "trainer.limit_val_batches=4", "trainer.sync_every_steps=2", "freeze.schedule=[{epoch: 1, unfreeze: [block2]}]")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}


def launcher(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone"]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)


def stop_in_second_epoch(args, run_dir, out=subprocess.DEVNULL) -> dict:
    """`torchrun run.py ARGS` over 2 processes, stopped by SIGTERM once its first epoch is done; its summary."""
    proc = subprocess.Popen([*launcher(2), "run.py", *args, f"hydra.run.dir={run_dir}"], cwd=ROOT, env=ENV,
                            stdout=out, stderr=subprocess.STDOUT if out is not subprocess.DEVNULL else out)
    try:
        wait_for(lambda: (run_dir / "metrics.csv").is_file()
                 and len((run_dir / "metrics.csv").read_text().splitlines()) >= 2, timeout=180)
        proc.send_signal(signal.SIGTERM)  # torchrun passes it to both workers
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "interrupted", summary
    return summary


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A 2-process fsdp run stopped by SIGTERM in its second epoch (block2 unfrozen): its folder and resume command."""
    run_dir = tmp_path_factory.mktemp("fsdp_stopped") / "run"
    return run_dir, stop_in_second_epoch(COMMON, run_dir)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The same run, not interrupted."""
    run_dir = tmp_path_factory.mktemp("fsdp_whole") / "run"
    result = run([*launcher(2), "run.py", *COMMON, f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def max_diff(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def copy_of(stopped, dest):
    run_dir, summary = stopped
    shutil.copytree(run_dir, dest)
    command = shlex.split(summary["resume_command"])
    return [a if not a.startswith("hydra.run.dir=") else f"hydra.run.dir={dest}" for a in command]


@pytest.mark.slow
def test_a_stopped_fsdp_run_resumes_with_its_printed_command_bit_for_bit(stopped, whole, tmp_path):
    run_dir, summary = stopped
    ckpt = run_dir / "checkpoints"
    assert (ckpt / "last.dcp" / "rank0.pt").is_file() and (ckpt / "last.dcp" / "rank1.pt").is_file()
    assert json.loads((ckpt / "last.dcp" / "meta.json").read_text())["world"] == 2
    assert not (ckpt / "last.pt").exists() and not (ckpt / "last.dcp.partial").exists()
    assert "last.dcp" in (run_dir / "run.log").read_text()
    command = copy_of(stopped, tmp_path / "resumed")
    assert command[:2] == ["torchrun", "--nproc_per_node=2"] and "trainer.resume=auto" in command
    # a save killed half-way leaves last.dcp.partial/ behind: the resume reads last.dcp, the next save removes it
    partial = tmp_path / "resumed" / "checkpoints" / "last.dcp.partial"
    partial.mkdir()
    (partial / "__0_0.distcp").write_bytes(b"half")
    resumed = run([*launcher(2), *command[2:]])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_json(tmp_path / "resumed" / "summary.json")["status"] == "completed"
    assert not partial.exists()
    for name in ("model.safetensors", "checkpoints/last.safetensors"):
        a, b = load_file(tmp_path / "resumed" / name), load_file(whole / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    rows = lambda d: (d / "metrics.csv").read_text().splitlines()  # noqa: E731
    assert [r.split(",")[:5] for r in rows(tmp_path / "resumed")] == [r.split(",")[:5] for r in rows(whole)]


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [3, 1])
def test_a_checkpoint_of_two_processes_resumes_on_another_number(stopped, whole, tmp_path, nproc):
    # 3 processes: DCP reshards under fsdp; 1 process: `python run.py` without fsdp gathers the whole state
    # (trainer.strategy and trainer.fsdp may differ from the checkpoint's config then, nothing else)
    command = copy_of(stopped, tmp_path / "run")
    if nproc == 1:
        resumed = run([sys.executable, *[a if a != "trainer.strategy=fsdp" else "trainer.strategy=auto"
                                          for a in command[2:]]])
    else:
        resumed = run([*launcher(nproc), *command[2:]])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (tmp_path / "run" / "run.log").read_text()
    assert f"was written by 2 process(es) and this run has {nproc}" in log
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["status"] == "completed" and summary.get("processes", 1) == nproc
    ckpt = tmp_path / "run" / "checkpoints"
    if nproc == 1:  # from here the run's state is last.pt
        assert (ckpt / "last.pt").is_file() and not (ckpt / "last.dcp").exists()
    else:
        assert json.loads((ckpt / "last.dcp" / "meta.json").read_text())["world"] == nproc
    a, b = load_file(tmp_path / "run" / "model.safetensors"), load_file(whole / "model.safetensors")
    diff = max_diff(a, b)
    print(f"max diff after resuming a 2-process checkpoint on {nproc}: {diff:.3g}")
    assert 0 < diff < 1e-3  # float summation order only: the batches are the same, split otherwise


@pytest.mark.slow
def test_a_damaged_or_missing_last_dcp_is_one_user_error_naming_it(stopped, tmp_path):
    from transfer_pipeline.training import sharded_checkpoint as sc

    copy_of(stopped, tmp_path / "run")
    dcp = tmp_path / "run" / "checkpoints" / "last.dcp"
    with pytest.raises(UserError, match=r"no sharded checkpoint at .*nowhere\.dcp"):
        sc.read(tmp_path / "nowhere.dcp", 0, 2)
    (dcp / "rank0.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"cannot read .*rank0\.pt"):
        sc.read(dcp, 0, 2)
    (dcp / ".metadata").unlink()
    with pytest.raises(UserError, match=r"last\.dcp is not a complete sharded checkpoint \(no \.metadata\)"):
        sc.read(dcp, 1, 2)
    # as a run says it (in one process without fsdp: the quickest to start)
    result = run_cli(*[a for a in COMMON if a != "trainer.strategy=fsdp"], "trainer.resume=auto",
                     f"hydra.run.dir={tmp_path / 'run'}", env=ENV)
    assert result.returncode != 0
    assert "last.dcp is not a complete sharded checkpoint (no .metadata)" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
