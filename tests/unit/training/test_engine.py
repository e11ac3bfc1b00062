"""The training engine through the loop itself: accumulation, deferred metric reads and NaN checks, loader
workers, the feature cache's plan, SLURM job steps, launcher plugins. The whole runs (precision and
memory-format switches, feature caching, torch.compile, torchrun with DDP on gloo, srun) are in
tests/e2e/test_training_runs.py."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from helpers import ROOT
from transfer_pipeline.errors import UserError
from transfer_pipeline.data.datasets import DataBundle, loaders
from transfer_pipeline.training.engine import Engine
from transfer_pipeline.training.loop import TrainContext, train

CPU = torch.device("cpu")


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5))


def data(n: int = 300, bad_sample: int | None = None) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)
    if bad_sample is not None:
        x[bad_sample, 0, 0, 0] = float("nan")
    return DataBundle(TensorDataset(x, y), TensorDataset(x[:64], y[:64]), [str(c) for c in range(5)])


def fit_mlp(batch_size: int, epochs: int = 2, model: nn.Module | None = None, bundle: DataBundle | None = None,
            **engine_kw) -> tuple[nn.Module, list[dict]]:
    model = model or mlp()
    sync_every = engine_kw.pop("sync_every", 50)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for pg in optimizer.param_groups:
        pg["name"] = "default"
    train_loader, val_loader = loaders(bundle or data(), batch_size, seed=0)
    state = train(TrainContext(model, optimizer, train_loader, val_loader, Engine(CPU, **engine_kw), epochs, events=(),
                               bn_policy="train", sync_every=sync_every))
    return model, state.history


def test_accumulating_two_batches_of_32_is_one_batch_of_64():
    one, rows_one = fit_mlp(64)
    two, rows_two = fit_mlp(32, accumulate=2)
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert [r["train_acc"] for r in rows_one] == [r["train_acc"] for r in rows_two]
    three, _ = fit_mlp(64, accumulate=3)  # 5 batches an epoch: windows of 3 and 2, so a different run
    assert not torch.allclose(one[1].weight, three[1].weight)


def test_accumulation_counts_optimizer_steps_for_schedules_and_step_events():
    from transfer_pipeline.training.loop import steps_per_epoch

    train_loader, _ = loaders(data(300), 32, seed=0)  # 10 batches (the last of 12)
    assert steps_per_epoch(train_loader) == 10
    assert steps_per_epoch(train_loader, accumulate=4) == 3  # windows 4, 4, 2
    assert steps_per_epoch(train_loader, limit_train_batches=5, accumulate=4) == 2


def test_metrics_do_not_depend_on_how_often_they_are_read():
    _, every_step = fit_mlp(32, sync_every=1)
    _, deferred = fit_mlp(32, sync_every=50)
    _, odd = fit_mlp(32, sync_every=3)
    def numbers(rows):
        return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in rows]

    assert numbers(every_step) == numbers(deferred) == numbers(odd)  # bitwise: losses added on the host in order


def test_a_nan_input_found_at_a_later_read_names_its_batch_and_blames_the_data():
    train_loader, _ = loaders(data(300), 32, seed=0)
    for _ in train_loader:  # epoch 0 as fit_mlp's fresh loader will draw it
        pass
    bad = train_loader.batch_sampler.global_batch(6)[3]
    with pytest.raises(UserError) as e:
        fit_mlp(32, bundle=data(300, bad_sample=bad), sync_every=50)
    text = str(e.value)
    assert "the loss became nan at epoch 0, step 6" in text and "the input batch itself holds NaN" in text
    assert "found at the check after global step 9" in text  # the end-of-epoch read, three steps later


def test_a_diverging_model_found_at_a_later_read_says_diverged():
    from helpers import nan_after

    with pytest.raises(UserError, match=r"step 4 .*found at the check after global step 9.*training diverged"):
        fit_mlp(32, model=nan_after(4), sync_every=50)


def test_the_first_step_is_checked_before_its_update():
    from helpers import nan_after

    model = nan_after(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match="first forward pass, before any update"):
        fit_mlp(32, model=model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no NaN step was taken


def test_loader_workers_persist():
    train_loader, val_loader = loaders(data(), 32, seed=0, num_workers=2)
    assert train_loader.persistent_workers and val_loader.persistent_workers


def test_engine_keys_are_checked(compose):
    for bad in ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=-2",
                "trainer.sync_every_steps=0"):
        with pytest.raises(UserError, match=bad.split("=")[0]):
            compose(bad)
    compose("trainer.accumulate_grad_batches=1000000")  # one step an epoch: allowed


# --- trainer.cache_features -------------------------------------------------------------------------

def test_cache_plan_refuses_dropout_augmentation_and_a_head_whose_output_is_changed():
    from transfer_pipeline.training.feature_cache import cache_plan, head_inputs

    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    assert "dropout" in cache_plan(model, {"2.weight", "2.bias"}, {}, False).reason
    plain = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    assert cache_plan(plain, {"2.weight"}, {}, False).head == "2"
    assert "augmentation" in cache_plan(plain, {"2.weight"}, {}, True).reason

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.fc = nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(self.body(x)) * 2

    why, _ = head_inputs(Scaled(), Scaled().fc, torch.randn(2, 8))
    assert why is not None  # a different module instance: never seen
    m = Scaled()
    why, _ = head_inputs(m, m.fc, torch.randn(2, 8))
    assert why == "the model changes the head's output before returning it"


# --- SLURM job steps (the runs under torchrun and srun are in tests/e2e/test_training_runs.py) -----

def test_slurm_job_steps_are_told_from_batch_scripts(monkeypatch):
    from transfer_pipeline.training import distributed

    for key in [k for k in os.environ if k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))]:
        monkeypatch.delenv(key)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RUN_ID"):  # export_slurm_env sets some: monkeypatch must know to take them away
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_NTASKS", "4")  # an sbatch script or salloc shell: no job step, one process
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert distributed.launched() is None
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "8")  # srun: a step of 8 tasks over 2 nodes
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_STEP_TASKS_PER_NODE", "4(x2)")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "gpu[07-08]")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    assert distributed.launched() == (5, 8, 1)
    assert "RANK" not in os.environ  # asking changes nothing
    distributed.export_slurm_env(5, 8, 1)
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_WORLD_SIZE"]) == ("5", "8", "4")
    assert os.environ["MASTER_ADDR"] == "gpu07" and os.environ["MASTER_PORT"] == str(29500 + 123456 % 10000)
    assert distributed.launcher_command(8) == "srun --ntasks=8 python run.py"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")  # torchrun started under srun: torchrun's command
    assert distributed.launcher_command(8).startswith("torchrun")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(UserError, match="torchrun"):
        distributed.launched()


@pytest.mark.parametrize("nodelist, host", [("", "localhost"), ("node1", "node1"), ("node1,node2", "node1"),
                                            ("gpu[07-09,12],cpu1", "gpu07"), ("a[1,3]-ib", "a1-ib"),
                                            ("x[001-004]", "x001")])
def test_first_host_of_a_slurm_node_list(nodelist, host):
    from transfer_pipeline.training.distributed import first_host

    assert first_host(nodelist) == host


def test_the_environment_is_restored_after_the_slurm_test():
    assert "RANK" not in os.environ or os.environ.get("WORLD_SIZE", "1") == "1"


# --- CUDA -----------------------------------------------------------------------------------------

@pytest.mark.cuda
def test_accumulation_on_cuda_matches_the_big_batch():
    one, _ = fit_mlp(64)
    a = {k: v.clone() for k, v in one.state_dict().items()}
    model = mlp().cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for pg in optimizer.param_groups:
        pg["name"] = "default"
    train_loader, val_loader = loaders(data(), 32, seed=0, pin_memory=True)
    train(TrainContext(model, optimizer, train_loader, val_loader, Engine(torch.device("cuda"), accumulate=2), 2,
                       events=(), bn_policy="train"))
    assert all(torch.allclose(a[k], v.cpu(), atol=1e-4) for k, v in model.state_dict().items())


# --- SLURM through Hydra's submitit launcher ------------------------------------------------------

def test_a_launcher_whose_plugin_is_missing_says_what_to_install():
    code = ("import sys; sys.argv = ['run.py', 'hydra/launcher=slurm']; import run; "
            "run.PLUGINS['hydra/launcher']['slurm'] = 'hydra_plugins.not_installed_here'; run.check_plugins()")
    import subprocess

    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "hydra/launcher=slurm needs the Hydra plugin" in result.stderr and 'pip install -e ".[sweeps]"' in result.stderr
