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


def wrong_head(state):
    state["model"] = {**state["model"], "head.weight": torch.zeros(3, 64)}


def other_groups(state):
    opt = state["optimizer"]
    state["optimizer"] = {**opt, "param_groups": opt["param_groups"] + [dict(opt["param_groups"][0], params=[999])]}


def nan_weight(state):
    state["model"] = {**state["model"], "stem.0.weight": torch.full_like(state["model"]["stem.0.weight"], float("nan"))}


def nan_optimizer(state):
    opt = state["optimizer"]
    inner = {i: {k: (torch.full_like(v, float("nan")) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                 for k, v in st.items()} for i, st in opt["state"].items()}
    state["optimizer"] = {**opt, "state": inner}


LOADS = {
    "wrong head shape": (wrong_head, r"the checkpoint's weights do not fit this model \(.*head.weight"),
    "other parameter groups": (other_groups, r"optimizer state does not fit this run's parameter groups"),
    "NaN weights": (nan_weight, r"holds NaN or inf in 1 tensor\(s\) \(stem.0.weight\).*not the learning rate"),
    "NaN optimizer state": (nan_optimizer, r"holds NaN or inf in .*optimizer state of parameter"),
}


@pytest.mark.parametrize("case", LOADS)
def test_a_checkpoint_that_does_not_fit_or_is_broken_is_named(run_pipeline, tmp_path, last_pt, case):
    change, message = LOADS[case]
    state = {**last_pt, "position": {**last_pt["position"], "epoch": 2}}
    path = tampered(tmp_path, state, change)
    with pytest.raises(UserError, match=message):
        run_pipeline(*ARGS, f"trainer.resume={path}", run_dir=tmp_path / "again")
    assert not (tmp_path / "again" / "metrics.csv").exists()


def test_resuming_without_checkpoints_leaves_no_stale_last_weights(run_pipeline, tmp_path, last_pt):
    import json

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    state = {**last_pt, "position": {**last_pt["position"], "epoch": 2}, "history": last_pt["history"][:2]}
    torch.save(state, run_dir / "checkpoints" / "last.pt")
    (run_dir / "checkpoints" / "last.safetensors").write_bytes(b"weights of epoch 2")
    (run_dir / ".transfer_pipeline").write_text("run folder of transfer_pipeline\n")
    (run_dir / "summary.json").write_text(json.dumps({"status": "interrupted", "started_at": "x"}))
    summary, _ = run_pipeline(*ARGS, "trainer.resume=auto", "trainer.save_checkpoints=false", run_dir=run_dir)
    assert summary["status"] == "completed" and summary["epochs"] == 4
    assert not (run_dir / "checkpoints" / "last.safetensors").exists()
