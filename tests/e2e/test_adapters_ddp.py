"""Adapters under torchrun (DDP over 2 gloo processes) and with the engine's switches (trainer.compile,
trainer.channels_last, trainer.precision=16): the adapter trained by 2 processes is the one-process adapter,
rank 0 alone writes adapter/ and the merged model.safetensors, a stopped torchrun run resumes bitwise, and
a compiled or channels-last run writes the same files in the adapted model's own names."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import ROOT, compose_config, read_json, run_cli, wait_for
from transfer_pipeline.errors import UserError
from transfer_pipeline.models import DigitsCNN
from transfer_pipeline.models.digits import PRETRAINED_0TO4

pytestmark = pytest.mark.slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}
LAUNCHER = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
# slowed down (0.1 s a forward) so that the resume test can stop a run in its first epoch
DDP = ("device=cpu", "adapters=lora", "model._target_=helpers.slow_digits_cnn", "+model.delay=0.1", "trainer.epochs=3",
       "trainer.limit_train_batches=6", "trainer.limit_val_batches=2", "trainer.progress=false",
       "trainer.sync_every_steps=1")
FAST = ("adapters=lora", "trainer.epochs=1", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2")
ADAPTER, MERGED, LAST = "adapter/adapter_model.safetensors", "model.safetensors", "checkpoints/last.safetensors"
ATOL = 1e-5  # 2 processes vs 1: the same up to float summation order (measured: <= 1.2e-7)


def torchrun(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LAUNCHER, "run.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)


def max_diff(a: Path, b: Path) -> float:
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys()
    return max(float((ta[k] - tb[k]).abs().max()) for k in ta)


def bitwise(a: Path, b: Path) -> bool:
    ta, tb = load_file(a), load_file(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def base_unchanged(last: dict) -> None:
    """The frozen base of an adapted model's state is bitwise the shipped weights (the head is new)."""
    for k, v in load_file(PRETRAINED_0TO4).items():
        if not k.startswith("head."):
            name = k.replace(".0.weight", ".0.base_layer.weight") if k.endswith(".0.weight") else k
            assert torch.equal(last[name], v), k


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same adapters run as 2 gloo processes (global batch 64) and as 1 process."""
    root = tmp_path_factory.mktemp("adapters_ddp")
    two = torchrun(*DDP, f"hydra.run.dir={root / 'two'}")
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_cli(*DDP, f"hydra.run.dir={root / 'one'}", env=ENV)
    assert one.returncode == 0, one.stderr[-3000:]
    return {"two": root / "two", "one": root / "one", "two_log": two.stdout + two.stderr}


def test_two_processes_train_the_one_process_adapter_and_rank_0_writes_it_once(runs):
    from peft import PeftModel

    two, one = runs["two"], runs["one"]
    for f in (ADAPTER, MERGED, LAST):
        assert max_diff(two / f, one / f) <= ATOL, f
    adapter = load_file(two / ADAPTER)
    assert min(float(v.abs().max()) for k, v in adapter.items() if "lora_B" in k) > 1e-3  # B starts at 0: it trained
    base_unchanged(load_file(two / LAST))
    summary = read_json(two / "summary.json")
    assert summary["status"] == "completed" and summary["processes"] == 2
    assert summary["adapters"]["merge_max_rel_diff"] <= 1e-4
    assert summary["val_acc"] == pytest.approx(read_json(one / "summary.json")["val_acc"], abs=0.02)
    # written once, by rank 0: one merge check and one adapter/ written, no temporary folder left beside it
    assert runs["two_log"].count("Adapters: adapter/ (peft format") == 1
    assert [p.name for p in two.iterdir() if p.name.startswith(".adapter")] == []
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (two / "adapter").iterdir()}
    # peft-loadable as in one process: the adapter on the loaded base = the merged weights in the target's names
    torch.manual_seed(0)
    base = DigitsCNN(num_classes=5)
    base.load_state_dict({k: v for k, v in load_file(PRETRAINED_0TO4).items() if not k.startswith("head.")},
                         strict=False)
    peft_model = PeftModel.from_pretrained(base.eval(), str(two / "adapter")).eval()
    plain = DigitsCNN(num_classes=5)
    plain.load_state_dict(load_file(two / MERGED))
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(peft_model(x), plain.eval()(x), atol=1e-5)


def test_a_stopped_torchrun_run_resumes_with_its_printed_command_bitwise(runs, tmp_path):
    run_dir = tmp_path / "stopped"
    proc = subprocess.Popen([*LAUNCHER, "run.py", *DDP, "trainer.checkpoint_every_steps=2", f"hydra.run.dir={run_dir}"],
                            cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: (run_dir / "checkpoints" / "last.pt").is_file(), timeout=120)  # 2 steps into epoch 1 of 3
    proc.send_signal(signal.SIGTERM)  # torchrun passes it to both workers
    proc.wait(timeout=60)
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "interrupted", summary
    assert not (run_dir / "adapter").exists() and not (run_dir / MERGED).exists()
    command = shlex.split(summary["resume_command"])
    assert command[:2] == ["torchrun", "--nproc_per_node=2"] and "trainer.resume=auto" in command
    resumed = subprocess.run([*LAUNCHER, *command[2:]], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming at epoch" in resumed.stdout + resumed.stderr
    assert read_json(run_dir / "summary.json")["status"] == "completed"
    for f in (ADAPTER, MERGED, LAST):  # the run that was never stopped, bit for bit
        assert bitwise(run_dir / f, runs["two"] / f), f


def test_a_saved_adapter_trains_on_under_torchrun_as_in_one_process(runs, tmp_path):
    more = ("device=cpu", "adapters=lora", f"source.adapter={runs['one'] / 'adapter'}", "trainer.epochs=1",
            "trainer.limit_train_batches=4", "trainer.limit_val_batches=2", "trainer.progress=false")
    two = torchrun(*more, f"hydra.run.dir={tmp_path / 'two'}")
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_cli(*more, f"hydra.run.dir={tmp_path / 'one'}", env=ENV)
    assert one.returncode == 0, one.stderr[-3000:]
    assert max_diff(tmp_path / "two" / ADAPTER, tmp_path / "one" / ADAPTER) <= ATOL
    assert max_diff(tmp_path / "two" / ADAPTER, runs["one"] / ADAPTER) > 1e-3  # it went on training
    summary = read_json(tmp_path / "two" / "summary.json")
    assert summary["processes"] == 2 and summary["source_adapter"]["rank"] == 8


# --- the engine's switches, in one process ---------------------------------------------------------

def train(run_dir: Path, *overrides: str) -> dict:
    from transfer_pipeline.run.lifecycle import run

    return run(compose_config(*FAST, *overrides), run_dir)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("plain") / "run"
    assert train(run_dir)["status"] == "completed"
    return run_dir


def no_wrapper_names(run_dir: Path) -> None:
    """No torch.compile / DDP wrapper name reached a file: checkpoints, adapter/ and the merged weights."""
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    names = [*saved["model"], *load_file(run_dir / LAST), *load_file(run_dir / ADAPTER), *load_file(run_dir / MERGED)]
    assert not [n for n in names if "_orig_mod" in n or n.startswith("module.")]
    assert set(load_file(run_dir / MERGED)) == set(DigitsCNN(num_classes=5).state_dict())


@pytest.mark.parametrize("switch", ["trainer.compile=true", "trainer.channels_last=true"])
def test_compile_and_channels_last_train_the_same_adapter_in_its_own_names(plain, tmp_path, switch):
    summary = train(tmp_path / "run", switch)
    assert summary["status"] == "completed" and summary["adapters"]["merge_max_rel_diff"] <= 1e-4
    no_wrapper_names(tmp_path / "run")
    for f in (ADAPTER, MERGED, LAST):
        assert max_diff(tmp_path / "run" / f, plain / f) <= ATOL, f  # measured: <= 8.4e-8
    base_unchanged(load_file(tmp_path / "run" / LAST))


def test_precision_16_trains_adapters_under_autocast_and_loss_scaling(plain, tmp_path, monkeypatch):
    """precision=16 is CUDA-only in this trainer; here its path (float16 autocast, GradScaler) runs on the CPU,
    whose autocast has float16 too, so that peft's layers under it are tested where there is no GPU."""
    import transfer_pipeline.training.engine as engine

    scaler = torch.amp.GradScaler
    monkeypatch.setattr(engine, "autocast_context", lambda precision, device: (
        (lambda: torch.autocast("cpu", dtype=torch.float16)) if precision == "16" else (lambda: engine._NO_AUTOCAST)))
    made = []
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device: made.append(scaler("cpu")) or made[-1])
    summary = train(tmp_path / "run", "trainer.precision=16")
    assert made and made[0].get_scale() > 1  # the loss was scaled
    assert summary["status"] == "completed" and summary["adapters"]["merge_max_rel_diff"] <= 1e-4
    diff = max_diff(tmp_path / "run" / ADAPTER, plain / ADAPTER)
    assert 1e-4 < diff < 0.1  # float16 steps: near float32's, not the same (autocast was on)
    base_unchanged(load_file(tmp_path / "run" / LAST))
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)["scaler"] is not None


def test_precision_16_on_cpu_says_it_needs_cuda_not_that_adapters_refuse_it(tmp_path):
    with pytest.raises(UserError, match=r"^trainer\.precision=16 needs CUDA; on CPU use trainer\.precision=bf16 or 32"):
        train(tmp_path / "run", "device=cpu", "trainer.precision=16")


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_precision_16_with_adapters_on_cuda(tmp_path, method):
    summary = train(tmp_path / "run", "device=cuda", f"adapters={method}", "trainer.precision=16",
                    "trainer.channels_last=true")
    assert summary["status"] == "completed" and summary["adapters"]["merge_max_rel_diff"] <= 1e-4
    no_wrapper_names(tmp_path / "run")
    base_unchanged(load_file(tmp_path / "run" / LAST))
