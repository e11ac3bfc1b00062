"""Your own dataset failing after the first batch: told as your data's error, with the item or batch,
never "a bug: please report it", and never a silently shorter epoch."""

from __future__ import annotations

import pytest
from helpers import compose_config, read_json

from transfer_pipeline.errors import UserError
from transfer_pipeline.run.lifecycle import run
from transfer_pipeline.schema import data_config

GENERIC = ("source=none", "mapping=default", "freeze=none", "trainer.epochs=2", "trainer.progress=false")


def run_faulty(tmp_path, fault: str, **data):
    cfg = compose_config(*GENERIC)
    cfg.data, cfg.model = data_config({"_target_": "data_targets.faulty_splits", "fault": fault, **data}), \
        {"_target_": "data_targets.mlp"}
    cfg.__post_init__()
    return run(cfg, tmp_path / "run")


@pytest.mark.parametrize(("fault", "message"), [
    ("raises", r"data: item 100 of the train split \(data_targets.faulty_splits\) raised ValueError: cannot decode "
               r"record 100, at .*data_targets.py:\d+ \(__getitem__\)"),
    ("stop", r"data: item 100 of the train split .* raised StopIteration"),
    ("label", r"epoch 1, batch \d+ of the train split: data: a target is class 7, outside 0..2"),
    ("size", r"data: batch \d+ of the train split could not be made \(RuntimeError: stack expects each tensor"),
    ("dtype", r"epoch 1, batch \d+ of the train split: task=classification: the targets are real numbers"),
])
def test_a_bad_item_after_the_first_batch_is_told_as_the_datas(tmp_path, fault, message):
    with pytest.raises(UserError, match=message):
        run_faulty(tmp_path, fault)
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["status"] == "failed" and summary["error_type"] == "UserError"


def test_an_epoch_that_ends_early_is_an_error_not_a_short_epoch():
    from torch.utils.data import DataLoader

    from transfer_pipeline.training.loop import ended_early

    loader = DataLoader(list(range(10)), batch_size=2)
    e = ended_early("train", 3, 5, loader, 0)
    assert "gave 3 of its 5 batches in epoch 1 (10 items)" in str(e) and "StopIteration" in str(e)


def test_evaluation_that_scores_part_of_the_split_is_an_error():
    import torch
    from torch.utils.data import DataLoader, Dataset

    from transfer_pipeline.training.engine import Engine
    from transfer_pipeline.training.evaluate import evaluate

    class StopsAt(Dataset):  # a built-in-like dataset (not wrapped): StopIteration ends the loader silently
        def __len__(self):
            return 10

        def __getitem__(self, i):
            if i == 6:
                raise StopIteration
            return torch.zeros(4), 0

    model = torch.nn.Linear(4, 3)
    with pytest.raises(UserError, match="evaluation scored 6 of the split's 10 items"):
        evaluate(model, DataLoader(StopsAt(), batch_size=2), Engine(torch.device("cpu")))
