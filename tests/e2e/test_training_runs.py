"""Whole training runs (the pipeline in-process, run.py, torchrun, srun, Hydra launchers): the engine's
switches, cached features, torch.compile, distributed training, best/EMA/early stopping, loggers and
curves, tasks and losses, schedule columns. Moved here from tests/unit/training and
tests/unit/tuning/test_schedule.py; the unit tests of the same features stay there."""

from __future__ import annotations

import csv
import logging
import os
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import ROOT, read_json, run_cli
from transfer_pipeline.errors import UserError


def metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))



# --- engine: precision, loader workers, sync batchnorm --------------------------------------------

def test_precision_bf16_and_channels_last_train_on_cpu(run_pipeline):
    summary, _ = run_pipeline("trainer.precision=bf16", "trainer.channels_last=true", "trainer.epochs=2",
                              "freeze.schedule=[]")
    assert summary["status"] == "completed" and summary["val_acc"] > 0.5


def test_loader_workers_train_the_same_weights(run_pipeline, tmp_path):
    common = ("trainer.epochs=2", "freeze.schedule=[]")
    workers, w_dir = run_pipeline(*common, "data.num_workers=2", run_dir=tmp_path / "workers")
    inline, i_dir = run_pipeline(*common, run_dir=tmp_path / "inline")
    a, b = load_file(w_dir / "model.safetensors"), load_file(i_dir / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # tensor data, no random transforms: the same batches


def test_sync_batchnorm_on_cpu_says_it_needs_cuda_only_under_torchrun(run_pipeline):
    summary, _ = run_pipeline("trainer.sync_batchnorm=true", "trainer.epochs=1", "freeze.schedule=[]")
    assert summary["status"] == "completed"  # one process: nothing to synchronise


# --- trainer.cache_features -----------------------------------------------------------------------

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

def test_compile_trains_and_a_missing_compiler_is_named(run_pipeline, tmp_path):
    summary, _ = run_pipeline("trainer.compile=true", "trainer.epochs=1", "freeze.schedule=[]",
                              run_dir=tmp_path / "compiled")
    assert summary["status"] == "completed" and summary["val_acc"] > 0.3
    env = {**os.environ, "CXX": "/nonexistent/c++", "CC": "/nonexistent/cc", "PATH": "/nonexistent"}
    result = run_cli("trainer.compile=true", "trainer.epochs=1", "freeze.schedule=[]", f"hydra.run.dir={tmp_path / 'nocc'}", env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "trainer.compile=true: torch.compile could not compile the model" in result.stdout + result.stderr
    assert read_json(tmp_path / "nocc" / "summary.json")["status"] == "failed"


# --- torchrun and srun ----------------------------------------------------------------------------

def torchrun(*args: str, nproc: int = 2, env: dict | None = None):
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone", "run.py", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


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


def test_a_job_through_the_submitit_launcher_completes(tmp_path):
    result = run_cli("-m", "hydra/launcher=submitit_local", "trainer.epochs=1", "freeze.schedule=[]",
                     f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_json(tmp_path / "0" / "summary.json")["status"] == "completed"


# --- best, final weights, early stopping, EMA, loggers, curves ------------------------------------

def test_the_best_epoch_is_kept_and_can_be_the_final_weights(run_pipeline, tmp_path):
    summary, run_dir = run_pipeline("trainer.monitor=val_loss", "trainer.keep_epoch_checkpoints=true",
                                    "trainer.final_weights=best")
    rows = metrics(run_dir)
    losses = [float(r["val_loss"]) for r in rows]
    best = losses.index(min(losses))
    assert summary["best_epoch"] == best and summary["best_val_loss"] == pytest.approx(min(losses))
    assert summary["monitor"] == "val_loss"
    best_file = load_file(run_dir / "checkpoints" / "best.safetensors")
    epoch_file = load_file(run_dir / "checkpoints" / f"epoch_{best}.safetensors")
    assert all(torch.equal(best_file[k], epoch_file[k]) for k in epoch_file)
    final = load_file(run_dir / "model.safetensors")
    assert all(torch.equal(final[k], best_file[k]) for k in final)


def test_the_default_final_weights_are_the_last_epochs(run_pipeline):
    _, run_dir = run_pipeline("trainer.epochs=3", "freeze.schedule=[]")
    final, last = load_file(run_dir / "model.safetensors"), load_file(run_dir / "checkpoints" / "last.safetensors")
    assert all(torch.equal(final[k], last[k]) for k in final)


def test_early_stopping_stops_but_gives_a_scheduled_unfreeze_time_to_act(run_pipeline, caplog):
    # min_delta 1.0: accuracy can never improve that much, so every epoch after the first is stale
    with caplog.at_level(logging.INFO):
        summary, run_dir = run_pipeline("trainer.early_stopping.patience=1", "trainer.early_stopping.min_delta=1.0")
    # the unfreeze at epoch 3 gets its patience of 1 epoch: the run stops after epoch index 3, not 1
    assert len(metrics(run_dir)) == 4 and summary["stopped_early"] and summary["status"] == "completed"
    assert "the last scheduled unfreeze gets 1 epoch(s) to act first" in caplog.text


def test_early_stopping_without_events_stops_after_patience(run_pipeline, tmp_path):
    summary, run_dir = run_pipeline("trainer.early_stopping.patience=2", "trainer.early_stopping.min_delta=1.0",
                                    "freeze.schedule=[]", run_dir=tmp_path / "no_events")
    assert len(metrics(run_dir)) == 3 and summary["stopped_early"]


def test_ema_is_evaluated_and_saved_alongside(run_pipeline):
    summary, run_dir = run_pipeline("trainer.ema.decay=0.9", "trainer.epochs=3", "freeze.schedule=[]",
                                    "trainer.monitor=ema_val_acc")
    rows = metrics(run_dir)
    assert all("ema_val_acc" in r and 0 <= float(r["ema_val_acc"]) <= 1 for r in rows)
    ema, last = load_file(run_dir / "checkpoints" / "ema.safetensors"), load_file(run_dir / "model.safetensors")
    assert set(ema) == set(last) and not torch.equal(ema["head.weight"], last["head.weight"])
    assert torch.equal(ema["stem.0.weight"], last["stem.0.weight"])  # frozen: its average is itself
    assert summary["monitor"] == "ema_val_acc" and summary["best_ema_val_acc"] is not None


def test_tensorboard_gets_every_metric_group_lr_and_the_plan(run_pipeline):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir = run_pipeline("logger=[csv,tensorboard]", "trainer.epochs=2", "freeze.schedule=[]")
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train_loss", "val_loss", "val_acc", "trainable_params", "lr/default"} <= scalars
    assert [e.step for e in events.Scalars("val_acc")] == [1, 2]
    assert "load_plan/text_summary" in events.Tags()["tensors"]
    assert (run_dir / "metrics.csv").is_file()  # csv always


def test_curves_png_is_written_and_its_absence_said_without_matplotlib(run_pipeline, monkeypatch, caplog, tmp_path):
    _, run_dir = run_pipeline("trainer.epochs=2", "freeze.schedule=[]")
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import builtins

    real = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib here")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with caplog.at_level(logging.INFO):
        _, run_dir = run_pipeline("trainer.epochs=1", "freeze.schedule=[]", run_dir=tmp_path / "plain")
    assert not (run_dir / "curves.png").exists()
    assert caplog.text.count("matplotlib is not installed: no curves.png written") == 1
    assert read_json(run_dir / "summary.json")["status"] == "completed"


# --- tasks, losses, metrics, predictions, your own data module ------------------------------------

def test_label_smoothing_through_the_loss_argument_raises_the_loss(run_pipeline, tmp_path):
    plain, _ = run_pipeline("trainer.epochs=4", "trainer.progress=false", run_dir=tmp_path / "a")
    smooth, _ = run_pipeline("trainer.epochs=4", "trainer.progress=false", "loss=cross_entropy",
                             "loss.label_smoothing=0.2", run_dir=tmp_path / "b")
    assert smooth["val_loss"] > plain["val_loss"] + 0.05  # smoothed targets: the loss cannot reach 0


def test_a_summed_loss_is_refused(run_pipeline, tmp_path):
    with pytest.raises(UserError, match=r"loss.reduction='sum'"):
        run_pipeline("trainer.epochs=4", "loss=cross_entropy", "+loss.reduction=sum", run_dir=tmp_path / "b")


def test_mixup_trains_on_soft_labels_and_flip_needs_image_folder(run_pipeline, tmp_path):
    summary, _ = run_pipeline("trainer.epochs=4", "trainer.progress=false", "data.mixup=0.4", run_dir=tmp_path / "a")
    assert summary["status"] == "completed" and summary["val_acc"] > 0.5
    with pytest.raises(UserError, match=r"data.augment=flip.*data=image_folder"):
        run_pipeline("trainer.epochs=4", "data.augment=flip", run_dir=tmp_path / "b")


def test_your_own_module_next_to_your_configs_through_run_py(tmp_path):
    """The README's example: my_conf/data/mine.yaml names my_conf/my_data.py's function."""
    conf = tmp_path / "my_conf"
    (conf / "data").mkdir(parents=True)
    (conf / "my_data.py").write_text(
        "import torch\nfrom torch.utils.data import TensorDataset\n\n"
        "def splits(n=200, seed=0):\n"
        "    g = torch.Generator().manual_seed(seed)\n"
        "    x = torch.randn(n, 1, 8, 8, generator=g)\n"
        "    y = (x.mean((1, 2, 3)) > 0).long()\n"
        "    return {'train': TensorDataset(x[:150], y[:150]), 'val': TensorDataset(x[150:], y[150:]),\n"
        "            'classes': ['dark', 'bright']}\n")
    (conf / "data" / "mine.yaml").write_text("_target_: my_data.splits\nn: 200\n")
    done = run_cli("--config-dir", str(conf), "data=mine", "source=none", "mapping=default", "freeze=none",
                   "model.num_classes=2", "trainer.epochs=2", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["classes"] == ["dark", "bright"] and summary["train_samples"] == 150
    typo = run_cli("--config-dir", str(conf), "data=mine", "data.nn=3", f"hydra.run.dir={tmp_path / 'r2'}",
                   cwd=tmp_path)
    assert typo.returncode != 0 and "nn" in typo.stderr
    again = run_cli("--rerun", str(tmp_path / "run"), f"hydra.run.dir={tmp_path / 'again'}", cwd=conf)
    assert again.returncode == 0, again.stderr[-2000:]  # the saved config names my_data: found from the folder run in
    assert read_json(tmp_path / "again" / "summary.json")["val_acc"] == summary["val_acc"]


def test_top5_accuracy_is_measured_with_more_than_five_classes_only(run_pipeline, tmp_path):
    summary, run_dir = run_pipeline("experiment=from_scratch", "data.classes=[0,1,2,3,4,5,6,7]", "model.num_classes=8",
                                    "trainer.epochs=2", "trainer.monitor=val_top5_acc", run_dir=tmp_path / "a")
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val_top5_acc" in header and summary["val_top5_acc"] >= summary["val_acc"]
    assert summary["best_val_top5_acc"] == max(float(r.split(",")[header.index("val_top5_acc")])
                                               for r in (run_dir / "metrics.csv").read_text().splitlines()[1:])
    five, five_dir = run_pipeline("trainer.epochs=4", run_dir=tmp_path / "b")  # the default: 5 classes
    assert "val_top5_acc" not in (five_dir / "metrics.csv").read_text() and "val_top5_acc" not in five
    with pytest.raises(UserError, match=r"trainer.monitor=val_top5_acc: with 5 classes .* always 1"):
        run_pipeline("trainer.epochs=4", "trainer.monitor=val_top5_acc", run_dir=tmp_path / "c")


def test_predictions_name_their_inputs_by_text_or_file_where_the_split_knows_them(run_pipeline, tmp_path):
    _, run_dir = run_pipeline("experiment=text_classifier", "trainer.epochs=1", "trainer.progress=false")
    summary, pred_dir = run_pipeline("experiment=text_classifier", "mode=predict",
                                     f"source.path={run_dir / 'model.safetensors'}", run_dir=tmp_path / "pred")
    from transfer_pipeline.data.toy_text import splits

    test = splits(task="sentiment", topics=["weather", "music"])["test"]
    rows = list(csv.DictReader((pred_dir / "predictions.csv").open()))
    assert summary["predict_split"] == "test" and [r["input"] for r in rows] == list(test.texts)
    assert {r["predicted"] for r in rows} <= {"negative", "positive"} and "top_2" in rows[0]
    assert sum(r["predicted"] == r["target"] for r in rows) / len(rows) > 0.9


# --- freeze schedule and parameter groups in a run ------------------------------------------------

def test_two_events_at_one_epoch_get_their_own_lr_columns(run_pipeline):
    import csv

    summary, run_dir = run_pipeline("freeze.trainable=[head]", "trainer.epochs=2", "trainer.limit_train_batches=2",
                                    "freeze.schedule=[{epoch: 1, unfreeze: [block2], lr: 0.002}, "
                                    "{epoch: 1, unfreeze: [block1], lr: 0.0005}]")
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        assert (float(row["lr/unfreeze@1:block2"]), float(row["lr/unfreeze@1:block1"]), float(row["lr/default"])) == (
            0.002, 0.0005, 0.01)
    assert [int(r["trainable_params"]) for r in rows] == [325, 325 + 18560 + 4672]
    assert [g["group"] for g in summary["param_groups"]] == ["unfreeze@1:block2", "unfreeze@1:block1", "default"]


def test_reserved_group_name_stops_the_run_before_training(run_pipeline):
    from transfer_pipeline.errors import UserError

    with pytest.raises(UserError, match=r"optim\.groups\[0\]: name='default' is reserved for generated groups"):
        run_pipeline("optim.groups=[{name: default, params: [head], lr: 0.1}]")
