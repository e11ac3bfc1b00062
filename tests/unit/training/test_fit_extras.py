"""Around the loop, without a run: the EMA monitor check, progress bars, logger names. The runs that keep
the best model, stop early, keep an EMA and write TensorBoard and curves.png are in
tests/e2e/test_training_runs.py."""

from __future__ import annotations

import io

import pytest


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


def test_an_unknown_logger_is_refused(compose):
    from transfer_pipeline.errors import UserError

    with pytest.raises(UserError, match=r"logger: 'wandb' is not a logger; choose from csv, tensorboard"):
        compose("logger=[csv,wandb]")


