"""Keeping the best model, early stopping, EMA, progress bars, TensorBoard and curves.png."""

from __future__ import annotations

import csv
import io
import logging

import pytest
import torch
from helpers import read_json
from safetensors.torch import load_file


def metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


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


def test_monitoring_the_ema_without_an_ema_is_an_error(compose):
    from transfer_pipeline.errors import UserError

    with pytest.raises(UserError, match=r"trainer\.monitor='ema_val_acc': .*\(ema_\* metrics need trainer\.ema\.decay\)"):
        compose("trainer.monitor=ema_val_acc")


def test_the_progress_bar_shows_on_a_terminal_only():
    from transfer_pipeline.training.progress import bar_factory

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert bar_factory(True, 3, io.StringIO()) is None  # a log file or a pipe: the per-epoch line only
    assert bar_factory(False, 3, Terminal()) is None  # trainer.progress=false
    stream = Terminal()
    bar = bar_factory(True, 3, stream, mininterval=0)(0, 20)
    for i in range(20):
        if i % 5 == 0:  # the loop shows metrics when it reads them from the device, not every step
            bar.show(loss=0.5, acc=0.75, samples_per_s=1234.0)
        bar.update(1)
    bar.close()
    text = stream.getvalue()
    assert "epoch 1/3" in text and "loss=0.5000" in text and "acc=0.750" in text and "samples/s=1234" in text
    assert "20/20" in text


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


def test_an_unknown_logger_is_refused(compose):
    from transfer_pipeline.errors import UserError

    with pytest.raises(UserError, match=r"logger: 'wandb' is not a logger; choose from csv, tensorboard"):
        compose("logger=[csv,wandb]")


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
