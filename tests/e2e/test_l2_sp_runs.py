"""optim.regularize=l2_sp through the pipeline: loaded tensors stay nearer the source's values than plain fine-tuning
leaves them, the summary says how near, a stopped run resumes bit for bit (the anchors come from the source again),
and a run with nothing loaded that trains, or with adapters, is refused before training."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file

from helpers import stop_and_resume
from transfer_pipeline.errors import UserError
from transfer_pipeline.models.digits import PRETRAINED_0TO4

FAST = ("freeze=none", "trainer.epochs=2", "trainer.limit_train_batches=8", "trainer.limit_val_batches=2")


def distance(run_dir, names) -> float:
    final, source = load_file(run_dir / "model.safetensors"), load_file(PRETRAINED_0TO4)
    return sum(float((final[n] - source[n]).pow(2).sum()) for n in names) ** 0.5


def test_l2_sp_keeps_the_loaded_tensors_near_the_source(run_pipeline, tmp_path, caplog):
    plain, plain_dir = run_pipeline(*FAST, run_dir=tmp_path / "plain")
    with caplog.at_level(logging.INFO, logger="transfer_pipeline.run.recipe"):
        pulled, pulled_dir = run_pipeline(*FAST, "optim.regularize=l2_sp", "optim.l2_sp.alpha=50",
                                          run_dir=tmp_path / "l2_sp")
    assert plain["status"] == pulled["status"] == "completed"
    l2 = pulled["l2_sp"]
    assert (l2["alpha"], l2["beta"], l2["fresh_tensors"]) == (50.0, 0.0001, 2)  # the new head: weight and bias
    loaded = [n for n in load_file(PRETRAINED_0TO4) if not n.startswith("head.") and "running" not in n
              and "num_batches" not in n]
    assert l2["loaded_tensors"] == len(loaded)  # every loaded parameter trains (freeze=none)
    assert l2["distance_to_source"] == pytest.approx(distance(pulled_dir, loaded), rel=1e-4)
    assert distance(pulled_dir, loaded) < 0.5 * distance(plain_dir, loaded)
    assert f"optim.regularize=l2_sp: {len(loaded)} loaded tensor(s)" in caplog.text


@pytest.mark.slow
def test_a_stopped_l2_sp_run_resumes_bit_for_bit(run_pipeline, tmp_path, monkeypatch):
    args = (*FAST, "optim.regularize=l2_sp", "optim.l2_sp.alpha=1", "trainer.epochs=3")
    reference, ref_dir, summary, out = stop_and_resume(run_pipeline, args, tmp_path, monkeypatch, 12)
    assert summary["status"] == "completed" and summary["val_loss"] == reference["val_loss"]
    a, b = load_file(ref_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summary["l2_sp"]["distance_to_source"] == reference["l2_sp"]["distance_to_source"]


@pytest.mark.parametrize("overrides, message", [
    (("experiment=from_scratch",), "this run has no source"),
    (("freeze.trainable=[head]", "freeze.schedule=[]"), r"none of the loaded tensors ever trains \(only fresh ones do: "
                                                         "head.bias, head.weight"),
    (("adapters=lora",), "optim.regularize=l2_sp with adapters"),
])
def test_l2_sp_with_nothing_to_pull_is_refused_before_training(run_pipeline, tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        run_pipeline(*overrides, "optim.regularize=l2_sp", "trainer.epochs=1", run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_mode_plan_shows_what_l2_sp_pulls(run_pipeline, tmp_path):
    summary, run_dir = run_pipeline("mode=plan", "optim.regularize=l2_sp")
    assert summary["status"] == "planned"
    # the default transfer: block2 (3 tensors) unfreezes later, the new head (2 tensors) trains from the start
    assert summary["l2_sp"]["loaded_tensors"] == 3 and summary["l2_sp"]["fresh_tensors"] == 2
