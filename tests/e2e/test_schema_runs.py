"""Values the schema cannot judge alone are refused by the run with the key to change (an empty split,
NaN weights), and valid limits still train: whole runs through the real composed config."""

from __future__ import annotations

import pytest

from transfer_pipeline.errors import UserError


def test_every_split_keeps_a_sample_of_every_class(run_pipeline):
    with pytest.raises(UserError, match=r"data\.val_fraction=0\.999: class '5' has \d+ sample\(s\), so its training "
                                        r"split would be empty"):
        run_pipeline("data.val_fraction=0.999")


def test_limits_and_clip_that_are_valid_still_train(run_pipeline):
    summary, _ = run_pipeline("trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "trainer.grad_clip=1.0",
                              "trainer.epochs=1", "freeze.schedule=[]")
    assert summary["status"] == "completed"


def test_nan_weights_from_the_start_are_not_blamed_on_the_learning_rate(run_pipeline, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from transfer_pipeline.models.digits import PRETRAINED_0TO4

    sd = load_file(PRETRAINED_0TO4)
    sd["head.weight"] = torch.full_like(sd["head.weight"], float("nan"))
    path = tmp_path / "nan_head.safetensors"
    save_file(sd, path)
    with pytest.raises(UserError) as e:  # with the check allowed off, the first forward is NaN
        run_pipeline(f"source.path={path}", "source.allow_nonfinite=true", "mapping=default", "trainer.epochs=1",
                     "freeze.schedule=[]", "data.classes=[0,1,2,3,4]")
    assert "before any update" in str(e.value) and "Lower optim.lr" not in str(e.value)
