"""checkpoints/last.dcp (training/sharded_checkpoint.py) in one gloo process: optimizer state by name, the
atomic save (partial folder, old one kept until the new is whole), the read's errors, the load. The runs under
torchrun (2 processes stopped and resumed, another number of processes) are in tests/e2e/test_fsdp_resume.py."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from transfer_pipeline.errors import UserError
from transfer_pipeline.training import sharded_checkpoint as sc
from transfer_pipeline.training.checkpoint import rng_state


def model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    model[1].requires_grad_(False)  # in the optimizer, never stepped: no state
    opt = torch.optim.AdamW([{"params": list(model[0].parameters()) + list(model[1].parameters()), "lr": 0.1},
                             {"params": model[2].parameters(), "lr": 0.01}])
    return model, opt


def step(model, opt):
    model(torch.linspace(-1, 1, 20).reshape(5, 4)).sum().backward()
    opt.step()
    opt.zero_grad()


def extra(epoch: int):
    pos = {"epoch": epoch, "step_in_epoch": 2, "global_step": 7, "n": 10, "loss_sum": 1.5, "stats": [],
           "seconds": 0.1, "loader_rng": None, "rng": rng_state()}
    return {"position": pos, "history": [], "samples": 0, "seconds": 0.0, "best": {"value": None, "epoch": None},
            "early": None, "fired": [], "config": {"seed": 0}, "scaler": None, "ema": None}


@pytest.fixture
def one_process(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_optimizer_state_by_parameter_name_leaves_the_optimizer_as_it_is():
    model, opt = model_and_optimizer(0)
    state, groups = sc.optimizer_by_name(model, opt)
    assert state == {} and not opt.state  # no zero step to make a state (torch's get_optimizer_state_dict takes one)
    step(model, opt)
    state, groups = sc.optimizer_by_name(model, opt)
    assert set(state) == {"0.weight", "0.bias", "2.weight", "2.bias"}  # the frozen BatchNorm has none
    assert [g["params"] for g in groups] == [["0.weight", "0.bias", "1.weight", "1.bias"], ["2.weight", "2.bias"]]


def test_save_is_atomic_and_load_restores_model_and_optimizer(tmp_path, one_process):
    ckpt = tmp_path / "checkpoints"
    model, opt = model_and_optimizer(0)
    step(model, opt)
    sc.save(ckpt, model, opt, extra(0), 0, 1)
    step(model, opt)
    (ckpt / "last.dcp.partial").mkdir()  # a save killed half-way: removed by the next one
    (ckpt / "last.dcp.partial" / "junk").write_text("x")
    sc.save(ckpt, model, opt, extra(1), 0, 1)
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.dcp"]
    assert json.loads((ckpt / "last.dcp" / "meta.json").read_text()) == {"format": 1, "world": 1}
    # killed between the two renames: the old one is the last good one, and the next save puts it back first
    (ckpt / "last.dcp").rename(ckpt / "last.dcp.old")
    assert sc.complete(ckpt / "last.dcp.old")
    saved = sc.read(ckpt / "last.dcp.old", 0, 1)
    assert saved["position"]["epoch"] == 1 and saved["world"] == 1 and saved["dcp"].endswith("last.dcp.old")
    other, other_opt = model_and_optimizer(1)
    sc.load_states(saved["dcp"], other, other_opt, saved["param_groups"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    a, b = opt.state_dict(), other_opt.state_dict()
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    assert all(torch.equal(a["state"][i][k], b["state"][i][k]) for i in a["state"] for k in a["state"][i])
    step(model, opt), step(other, other_opt)  # and they go on the same
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


def test_read_names_what_is_missing_or_damaged(tmp_path, one_process):
    with pytest.raises(UserError, match="no sharded checkpoint at .*last.dcp"):
        sc.read(tmp_path / "last.dcp", 0, 1)
    model, opt = model_and_optimizer(0)
    sc.save(tmp_path, model, opt, extra(0), 0, 1)
    (tmp_path / "last.dcp" / "meta.json").write_text("{")
    with pytest.raises(UserError, match="cannot read .*meta.json"):
        sc.read(tmp_path / "last.dcp", 0, 1)
    (tmp_path / "last.dcp" / "meta.json").unlink()
    with pytest.raises(UserError, match=r"not a complete sharded checkpoint \(no meta.json\)"):
        sc.read(tmp_path / "last.dcp", 0, 1)
    wrong = nn.Linear(4, 2)
    sc.save(tmp_path, model, opt, extra(0), 0, 1)
    with pytest.raises(UserError, match="does not fit this model .*Missing key in checkpoint state_dict: model.weight"):
        sc.load_states(tmp_path / "last.dcp", wrong, torch.optim.SGD(wrong.parameters(), lr=0.1), [])
