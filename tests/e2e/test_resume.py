"""Runs that never lose work: full-state checkpoints, resume after SIGKILL / SIGTERM / Ctrl-C bit for bit,
determinism, the best model, early stopping, EMA. Real processes, killed and resumed."""

from __future__ import annotations

import csv
import signal
import time

import pytest
import torch
from helpers import ROOT, read_json, run_cli, start_cli, wait_for
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
ENV = {"PYTHONPATH": str(ROOT / "tests")}
# a deterministic run that lasts long enough to be stopped: 12 steps of 0.05 s an epoch
SLOW = ["model._target_=helpers.slow_digits_cnn", "+model.delay=0.05", "trainer.deterministic=true", "trainer.epochs=5"]


def rows(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in csv.DictReader(f)]  # timing differs


def n_rows(run_dir) -> int:
    try:
        return len((run_dir / "metrics.csv").read_text().splitlines()) - 1
    except OSError:
        return 0


def same_weights(a, b) -> bool:
    wa, wb = load_file(a), load_file(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The run that was never interrupted."""
    run_dir = tmp_path_factory.mktemp("reference")
    out = run_cli(*SLOW, f"hydra.run.dir={run_dir}", env=ENV)
    assert out.returncode == 0, out.stdout + out.stderr
    return run_dir


def test_the_same_config_gives_bitwise_the_same_weights(reference, tmp_path):
    out = run_cli(*SLOW, f"hydra.run.dir={tmp_path}", env=ENV)
    assert out.returncode == 0
    assert same_weights(reference / "model.safetensors", tmp_path / "model.safetensors")
    assert rows(reference) == rows(tmp_path)


def test_sigkill_after_an_epoch_then_resume_ends_bitwise_the_same(reference, tmp_path):
    proc = start_cli(*SLOW, f"hydra.run.dir={tmp_path}", env=ENV)
    wait_for(lambda: n_rows(tmp_path) >= 2)
    proc.kill()
    proc.communicate(timeout=30)
    assert read_json(tmp_path / "summary.json")["status"] == "running"
    out = run_cli(*SLOW, "trainer.resume=auto", f"hydra.run.dir={tmp_path}", env=ENV)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Resuming at epoch" in out.stdout
    assert same_weights(reference / "model.safetensors", tmp_path / "model.safetensors")
    assert rows(reference) == rows(tmp_path)
    assert read_json(tmp_path / "summary.json")["status"] == "completed"


def test_sigkill_mid_epoch_with_step_checkpoints_then_resume_is_bitwise(reference, tmp_path):
    args = [*SLOW, "trainer.checkpoint_every_steps=4"]
    proc = start_cli(*args, f"hydra.run.dir={tmp_path}", env=ENV)

    def past_a_step_checkpoint() -> bool:  # into the second epoch, past a step checkpoint (however slow the machine)
        if n_rows(tmp_path) < 1:
            return False
        try:
            return torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["position"]["step_in_epoch"] > 0
        except (OSError, RuntimeError, EOFError, KeyError):
            return False

    # Freeze the run before deciding: between seeing a step checkpoint and the kill, a busy machine can let the
    # run reach the epoch's end and overwrite last.pt with an epoch checkpoint. A stopped process writes nothing.
    while True:
        wait_for(past_a_step_checkpoint)
        proc.send_signal(signal.SIGSTOP)
        if past_a_step_checkpoint():
            break
        proc.send_signal(signal.SIGCONT)
    proc.kill()
    proc.communicate(timeout=30)
    position = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["position"]
    assert position["step_in_epoch"] > 0, position
    out = run_cli(*args, "trainer.resume=auto", f"hydra.run.dir={tmp_path}", env=ENV)
    assert out.returncode == 0, out.stdout + out.stderr
    assert same_weights(reference / "model.safetensors", tmp_path / "model.safetensors")
    assert rows(reference) == rows(tmp_path)


def test_sigterm_mid_epoch_saves_says_how_to_resume_and_resumes_bitwise(reference, tmp_path):
    proc = start_cli(*SLOW, f"hydra.run.dir={tmp_path}", env=ENV)
    wait_for(lambda: n_rows(tmp_path) >= 1)
    time.sleep(0.25)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, out + err
    summary = read_json(tmp_path / "summary.json")
    assert summary["status"] == "interrupted"
    command = summary["resume_command"]
    assert "trainer.resume=auto" in command and f"hydra.run.dir={tmp_path}" in command and "+model.delay=0.05" in command
    assert command in out
    position = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["position"]
    assert position["step_in_epoch"] > 0  # stopped inside the epoch, after a finished step
    resumed = run_cli(*SLOW, "trainer.resume=auto", f"hydra.run.dir={tmp_path}", env=ENV)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert same_weights(reference / "model.safetensors", tmp_path / "model.safetensors")
    assert rows(reference) == rows(tmp_path)


def test_a_second_ctrl_c_exits_at_once_and_leaves_no_broken_file(tmp_path):
    args = [a.replace("delay=0.05", "delay=3") for a in SLOW]  # a step takes 3 s: the first Ctrl-C would wait for it
    proc = start_cli(*args, f"hydra.run.dir={tmp_path}", env=ENV)
    wait_for(lambda: "Parameter groups" in (tmp_path / "run.log").read_text() if (tmp_path / "run.log").exists() else False)
    time.sleep(5)  # inside a training step (the first forward of training starts ~3 s after the groups)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and time.monotonic() - started < 2.5, out + err
    assert "press Ctrl-C again to stop at once" in out
    assert read_json(tmp_path / "summary.json")["status"] == "interrupted"
    assert not list(tmp_path.rglob(".*.tmp"))


def test_resuming_with_another_config_names_the_differing_keys(tmp_path):
    proc = start_cli(*SLOW, f"hydra.run.dir={tmp_path}", env=ENV)
    wait_for(lambda: n_rows(tmp_path) >= 1)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    out = run_cli(*SLOW, "trainer.resume=auto", "optim.lr=0.02", "freeze.schedule.0.epoch=2",
                  f"hydra.run.dir={tmp_path}", env=ENV)
    assert out.returncode == 2
    assert "optim.lr: 0.01 -> 0.02" in out.stdout and "freeze.schedule[0].epoch: 3 -> 2" in out.stdout
    refused = run_cli(*SLOW, f"hydra.run.dir={tmp_path}", env=ENV)  # without trainer.resume: never mixed
    assert refused.returncode == 2 and "add trainer.resume=auto" in refused.stderr


def test_resume_needs_a_checkpoint(tmp_path):
    out = run_cli("trainer.resume=auto", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2 and "trainer.resume=auto continues the run in hydra.run.dir" in out.stdout


def test_resuming_a_completed_run_says_there_is_nothing_to_resume(tmp_path):
    assert run_cli("trainer.epochs=1", "freeze.schedule=[]", f"hydra.run.dir={tmp_path}").returncode == 0
    out = run_cli("trainer.epochs=1", "freeze.schedule=[]", "trainer.resume=auto", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2 and "completed; there is nothing to resume" in out.stderr
    assert read_json(tmp_path / "summary.json")["status"] == "completed"


def test_a_resume_file_that_is_not_a_full_state_checkpoint_is_refused(tmp_path):
    from transfer_pipeline.models.digits import ASSETS

    for name, match in (("digits_cnn_0to4_wrapped.pt", "is not a full-state checkpoint of this pipeline"),
                        ("digits_cnn_0to4_module.pt", "cannot read")):  # a pickled module: never unpickled
        out = run_cli(f"trainer.resume={ASSETS / name}", f"hydra.run.dir={tmp_path / name}")
        assert out.returncode == 2 and match in out.stdout, out.stdout
