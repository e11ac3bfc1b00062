"""trainer.cache_features only where it gives the run without it: randomness or a train/eval branch in
the frozen part, which no module type shows, turns the cache off with the reason."""

from __future__ import annotations

import logging

import pytest
from safetensors.torch import load_file

ARGS = ("freeze.schedule=[]", "trainer.epochs=2", "trainer.progress=false", "trainer.deterministic=true")


@pytest.mark.parametrize(("model", "why"), [("FunctionalDropout", "random"), ("Noisy", "random"),
                                            ("TrainBranch", "branches on self.training")])
def test_a_frozen_part_that_changes_turns_the_cache_off(run_pipeline, tmp_path, caplog, model, why):
    target = f"model._target_=cache_models.{model}"
    with caplog.at_level(logging.WARNING):
        cached, cached_dir = run_pipeline(*ARGS, target, "trainer.cache_features=true", run_dir=tmp_path / "cached")
    assert cached["cache_features"] is None  # the head the cache fed, where it applied
    assert any("does not apply" in r.getMessage() and why in r.getMessage() for r in caplog.records)
    plain, plain_dir = run_pipeline(*ARGS, target, run_dir=tmp_path / "plain")
    a, b = load_file(cached_dir / "model.safetensors"), load_file(plain_dir / "model.safetensors")
    assert all(bool((a[k] == b[k]).all()) for k in a)  # the RNG the check drew from was put back


def test_a_steady_frozen_part_still_caches(run_pipeline, tmp_path):
    summary, _ = run_pipeline(*ARGS, "trainer.cache_features=true", run_dir=tmp_path / "r")
    assert summary["cache_features"] == "head"
