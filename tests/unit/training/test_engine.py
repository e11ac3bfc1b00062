"""The training engine: accumulation, deferred metric reads and NaN checks, feature caching, precision and
memory-format switches, torch.compile, and torchrun with DDP (gloo on CPU)."""

from __future__ import annotations

import logging
import os
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

from helpers import ROOT, read_json, run_cli
from transfer_pipeline.errors import UserError
from transfer_pipeline.data.datasets import DataBundle, loaders
from transfer_pipeline.training.engine import Engine
from transfer_pipeline.training.loop import train

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
    state = train(model, optimizer, train_loader, val_loader, epochs=epochs, events=(), bn_policy="train",
                  engine=Engine(CPU, **engine_kw), sync_every=sync_every)
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


def test_precision_bf16_and_channels_last_train_on_cpu(run_pipeline):
    summary, _ = run_pipeline("trainer.precision=bf16", "trainer.channels_last=true", "trainer.epochs=2",
                              "freeze.schedule=[]")
    assert summary["status"] == "completed" and summary["val_acc"] > 0.5


def test_loader_workers_persist_and_train_the_same_weights(run_pipeline, tmp_path):
    train_loader, val_loader = loaders(data(), 32, seed=0, num_workers=2)
    assert train_loader.persistent_workers and val_loader.persistent_workers
    common = ("trainer.epochs=2", "freeze.schedule=[]")
    workers, w_dir = run_pipeline(*common, "data.num_workers=2", run_dir=tmp_path / "workers")
    inline, i_dir = run_pipeline(*common, run_dir=tmp_path / "inline")
    a, b = load_file(w_dir / "model.safetensors"), load_file(i_dir / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # tensor data, no random transforms: the same batches


def test_engine_keys_are_checked(compose):
    for bad in ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=-2",
                "trainer.sync_every_steps=0"):
        with pytest.raises(UserError, match=bad.split("=")[0]):
            compose(bad)
    compose("trainer.accumulate_grad_batches=1000000")  # one step an epoch: allowed


def test_sync_batchnorm_on_cpu_says_it_needs_cuda_only_under_torchrun(run_pipeline):
    summary, _ = run_pipeline("trainer.sync_batchnorm=true", "trainer.epochs=1", "freeze.schedule=[]")
    assert summary["status"] == "completed"  # one process: nothing to synchronise


# --- trainer.cache_features -------------------------------------------------------------------------

def test_cached_features_train_the_head_to_the_same_weights(run_pipeline, tmp_path):
    common = ("freeze.trainable=[head]", "freeze.schedule=[]", "trainer.epochs=3")
    cached, cached_dir = run_pipeline(*common, "trainer.cache_features=true", run_dir=tmp_path / "cached")
    plain, plain_dir = run_pipeline(*common, run_dir=tmp_path / "plain")
    assert cached["cache_features"] == "head" and plain.get("cache_features") is None
    a, b = load_file(cached_dir / "model.safetensors"), load_file(plain_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert cached["val_acc"] == pytest.approx(plain["val_acc"], abs=1e-3)


def test_cached_features_with_ema_evaluate_the_ema_head(run_pipeline):
    summary, run_dir = run_pipeline("freeze.trainable=[head]", "freeze.schedule=[]", "trainer.epochs=2",
                                    "trainer.cache_features=true", "trainer.ema.decay=0.9")
    assert summary["cache_features"] == "head"
    assert "ema_val_acc" in (run_dir / "metrics.csv").read_text().splitlines()[0]


@pytest.mark.parametrize("overrides, reason", [
    (("freeze.trainable=[head, block2]", "freeze.schedule=[]"), "not inside one module"),
    (("freeze.trainable=[head]", "freeze.schedule=[{epoch: 1, unfreeze: [block2]}]"), "not inside one module"),
    (("freeze.trainable=[head]", "freeze.schedule=[]", "freeze.bn=train"), "updates its statistics"),
])
def test_the_plan_says_why_the_cache_does_not_apply(run_pipeline, caplog, overrides, reason):
    caplog.set_level(logging.INFO)
    summary, _ = run_pipeline("mode=plan", "trainer.cache_features=true", *overrides)
    assert summary["cache_features"] is None
    assert "trainer.cache_features: does not apply" in caplog.text and reason in caplog.text


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


def test_image_folder_training_data_is_augmented_so_no_cache(run_pipeline, tmp_path, caplog):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "img" / cls / f"{i}.png")
    summary, _ = run_pipeline("experiment=from_scratch", "data=image_folder", f"data.root={tmp_path / 'img'}",
                              "data.image_size=8", "data.channels=1", "model.num_classes=2", "data.val_fraction=0.5",
                              "trainer.epochs=1", "trainer.cache_features=true", "freeze.trainable=[head]", "freeze.bn=auto")
    assert summary["status"] == "completed" and summary["cache_features"] is None
    assert "random transforms" in caplog.text


# --- torch.compile --------------------------------------------------------------------------------

@pytest.mark.slow
def test_compile_trains_and_a_missing_compiler_is_named(run_pipeline, tmp_path):
    summary, _ = run_pipeline("trainer.compile=true", "trainer.epochs=1", "freeze.schedule=[]",
                              run_dir=tmp_path / "compiled")
    assert summary["status"] == "completed" and summary["val_acc"] > 0.3
    env = {**os.environ, "CXX": "/nonexistent/c++", "CC": "/nonexistent/cc", "PATH": "/nonexistent"}
    result = run_cli("trainer.compile=true", "trainer.epochs=1", "freeze.schedule=[]", f"hydra.run.dir={tmp_path / 'nocc'}", env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "trainer.compile=true: torch.compile could not compile the model" in result.stdout + result.stderr
    assert read_json(tmp_path / "nocc" / "summary.json")["status"] == "failed"


# --- torchrun -------------------------------------------------------------------------------------

def torchrun(*args: str, nproc: int = 2, env: dict | None = None):
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone", "run.py", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


@pytest.mark.slow
def test_two_gloo_processes_of_32_train_the_weights_of_one_process_of_64(tmp_path):
    # block2 unfreezes at epoch 1: DDP is re-wrapped so its gradients are averaged too
    common = ("device=cpu", "trainer.batch_size=64", "trainer.epochs=3", "freeze.bn=frozen",
              "trainer.keep_epoch_checkpoints=true",
              "freeze.schedule=[{epoch: 1, unfreeze: [block2]}]", "trainer.progress=false")
    two = torchrun(*common, f"hydra.run.dir={tmp_path / 'two'}")
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_cli(*common, f"hydra.run.dir={tmp_path / 'one'}", env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = load_file(tmp_path / "two" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    # the same up to float summation order (two halves summed, then averaged), which Adam amplifies a little
    assert all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-4) for k in a)
    start = load_file(tmp_path / "one" / "checkpoints" / "epoch_0.safetensors")
    assert (b["block2.0.weight"] - start["block2.0.weight"]).abs().max() > 1e-2  # block2 trained after epoch 0
    summary = read_json(tmp_path / "two" / "summary.json")
    assert summary["status"] == "completed" and summary["processes"] == 2
    assert summary["val_acc"] == pytest.approx(read_json(tmp_path / "one" / "summary.json")["val_acc"], abs=0.02)
    assert "process 1 of 2" not in two.stderr  # rank 1 logs warnings only
    assert not list(tmp_path.glob("transfer_pipeline_rank*"))


@pytest.mark.slow
def test_sigterm_under_torchrun_stops_every_process_and_the_printed_command_resumes(tmp_path):
    import shlex
    import signal
    import subprocess

    from helpers import wait_for

    run_dir = tmp_path / "ddp"
    common = ("device=cpu", "freeze.bn=frozen", "trainer.epochs=5", "model._target_=helpers.slow_digits_cnn",
              "+model.delay=0.02", "trainer.progress=false", "trainer.sync_every_steps=2")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    proc = subprocess.Popen([*launcher, "run.py", *common, f"hydra.run.dir={run_dir}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: (run_dir / "metrics.csv").is_file() and len((run_dir / "metrics.csv").read_text().splitlines()) >= 3,
             timeout=120)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it to both workers
    proc.wait(timeout=60)
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "interrupted", summary
    command = shlex.split(summary["resume_command"])
    assert command[:2] == ["torchrun", "--nproc_per_node=2"] and "trainer.resume=auto" in command
    resumed = subprocess.run([*launcher, *command[2:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_json(run_dir / "summary.json")["status"] == "completed"
    single = run_cli(*common, f"hydra.run.dir={tmp_path / 'one'}", env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = load_file(run_dir / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-4) for k in a)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_started_as_srun_starts_them_train_as_one(tmp_path):
    import subprocess

    common = ("device=cpu", "trainer.epochs=2", "freeze.bn=frozen", "freeze.schedule=[]", "trainer.progress=false")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))}
    base.update(OMP_NUM_THREADS="1", SLURM_STEP_NUM_TASKS="2", SLURM_STEP_NODELIST="localhost", SLURM_JOB_ID="7",
                SLURM_STEP_TASKS_PER_NODE="2", MASTER_PORT=str(free_port()))
    procs = [subprocess.Popen([sys.executable, "run.py", *common, f"hydra.run.dir={tmp_path / 'slurm'}"], cwd=ROOT,
                              env={**base, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    summary = read_json(tmp_path / "slurm" / "summary.json")
    assert summary["processes"] == 2 and summary["status"] == "completed"
    one = run_cli(*common, f"hydra.run.dir={tmp_path / 'one'}")
    assert one.returncode == 0
    a, b = load_file(tmp_path / "slurm" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-4) for k in a)


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


def test_a_sweep_under_torchrun_is_refused(tmp_path):
    result = run_cli("-m", "seed=0,1", env={**os.environ, "WORLD_SIZE": "2", "RANK": "0"})
    assert result.returncode == 2 and "cannot run under torchrun" in result.stderr


# --- CUDA -----------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("switches", [("trainer.precision=16",), ("trainer.precision=bf16", "trainer.channels_last=true"),
                                      ("trainer.compile=true",), ("trainer.cache_features=true", "freeze.trainable=[head]",
                                                                  "freeze.schedule=[]")])
def test_engine_switches_on_cuda(run_pipeline, switches):
    summary, _ = run_pipeline("device=cuda", "trainer.epochs=2", *switches)
    assert summary["status"] == "completed" and summary["val_acc"] > 0.5


@pytest.mark.cuda
def test_accumulation_on_cuda_matches_the_big_batch():
    one, _ = fit_mlp(64)
    a = {k: v.clone() for k, v in one.state_dict().items()}
    model = mlp().cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for pg in optimizer.param_groups:
        pg["name"] = "default"
    train_loader, val_loader = loaders(data(), 32, seed=0, pin_memory=True)
    train(model, optimizer, train_loader, val_loader, epochs=2, events=(), bn_policy="train",
          engine=Engine(torch.device("cuda"), accumulate=2))
    assert all(torch.allclose(a[k], v.cpu(), atol=1e-4) for k, v in model.state_dict().items())


@pytest.mark.cuda
@pytest.mark.slow
def test_two_nccl_processes_with_sync_batchnorm(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    result = torchrun("device=cuda", "trainer.sync_batchnorm=true", "trainer.epochs=2", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]


# --- SLURM through Hydra's submitit launcher ------------------------------------------------------

def test_the_shipped_slurm_launcher_config_composes():
    result = run_cli("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4",
                     "hydra.launcher.tasks_per_node=4", "--cfg", "hydra")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "SlurmLauncher" in result.stdout and "partition: gpu" in result.stdout
    assert "tasks_per_node: 4" in result.stdout and "signal_delay_s: 120" in result.stdout


def test_a_launcher_whose_plugin_is_missing_says_what_to_install():
    code = ("import sys; sys.argv = ['run.py', 'hydra/launcher=slurm']; import run; "
            "run.PLUGINS['hydra/launcher']['slurm'] = 'hydra_plugins.not_installed_here'; run.check_plugins()")
    import subprocess

    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "hydra/launcher=slurm needs the Hydra plugin" in result.stderr and 'pip install -e ".[sweeps]"' in result.stderr


@pytest.mark.slow
def test_a_job_through_the_submitit_launcher_completes(tmp_path):
    result = run_cli("-m", "hydra/launcher=submitit_local", "trainer.epochs=1", "freeze.schedule=[]",
                     f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_json(tmp_path / "0" / "summary.json")["status"] == "completed"
