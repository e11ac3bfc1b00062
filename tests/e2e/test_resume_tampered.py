"""A last.pt that was changed after its run wrote it, or comes from another run: one message naming what
differs, before anything trains (never a traceback, never epochs -3 ... 5)."""

from __future__ import annotations

import pytest
import torch

from transfer_pipeline.errors import UserError

ARGS = ("trainer.epochs=4", "freeze.schedule=[]", "trainer.progress=false")


@pytest.fixture(scope="module")
def last_pt(tmp_path_factory):
    from helpers import compose_config

    from transfer_pipeline.run.lifecycle import run

    run_dir = tmp_path_factory.mktemp("first") / "run"
    summary = run(compose_config(*ARGS), run_dir)
    assert summary["status"] == "completed"
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)


def tampered(tmp_path, state, change):
    state = {**state, "position": dict(state["position"])}
    change(state)
    path = tmp_path / "last.pt"
    torch.save(state, path)
    return path


def set_in(key, value):
    def change(state):
        state["position"][key] = value
    return change


CASES = {
    "negative epoch": (set_in("epoch", -3), r"position.epoch is -3, not a count"),
    "unknown position key": (set_in("teleport", 1), r"position has unknown keys teleport"),
    "no config": (lambda s: s.pop("config"), r"it has no 'config'"),
    "rng of another size": (lambda s: s["position"].update(rng={**s["position"]["rng"], "torch": torch.zeros(7, dtype=torch.uint8)}),
                            r"torch RNG state has shape"),
    "history not a list": (lambda s: s.update(history="x"), r"its 'history' is a str"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_tampered_checkpoint_is_refused_naming_what(run_pipeline, tmp_path, last_pt, case):
    change, message = CASES[case]
    path = tampered(tmp_path, last_pt, change)
    with pytest.raises(UserError, match="is not a checkpoint of a run of this pipeline, or it was changed .*" + message):
        run_pipeline(*ARGS, f"trainer.resume={path}", run_dir=tmp_path / "again")
    assert not (tmp_path / "again" / "metrics.csv").exists()
