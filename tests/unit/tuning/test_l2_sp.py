"""optim.regularize=l2_sp (tuning/l2_sp.py): the penalty's gradients against autograd on the penalty written by hand,
where they are added in a step (before clipping), the plan's refusals and the schema's checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import compose_config
from transfer_pipeline.errors import UserError
from transfer_pipeline.tuning.l2_sp import plan_l2_sp


def two_layers() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def test_the_added_gradients_are_those_of_the_penalty_written_by_hand():
    model = two_layers()
    loaded = ["0.weight", "0.bias"]  # the first layer came from the source, the second is a fresh head
    ever = {"0.weight", "0.bias", "2.weight", "2.bias"}
    reg = plan_l2_sp(model, loaded, ever, alpha=0.3, beta=0.05, has_source=True)
    source = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():  # training moved every tensor
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    x = torch.randn(5, 4)

    def task_loss():
        return model(x).pow(2).mean()

    # by hand: the task's loss plus alpha/2 ||w - w_source||^2 (loaded) plus beta/2 ||w||^2 (fresh), through autograd
    params = dict(model.named_parameters())
    hand = task_loss() + 0.3 / 2 * sum((params[n] - source[n]).pow(2).sum() for n in loaded) \
        + 0.05 / 2 * sum(params[n].pow(2).sum() for n in ("2.weight", "2.bias"))
    expected = torch.autograd.grad(hand, list(params.values()))
    model.zero_grad()
    task_loss().backward()
    reg.add_gradients(model)()
    for (name, p), want in zip(params.items(), expected):
        assert torch.allclose(p.grad, want, atol=1e-6), name
    assert reg.penalty(model) == pytest.approx(float((hand - task_loss()).detach()), rel=1e-5)
    assert reg.distance(model) == pytest.approx(
        float(sum((params[n] - source[n]).pow(2).sum() for n in loaded).detach()) ** 0.5, rel=1e-5)
    assert reg.to_dict() == {"alpha": 0.3, "beta": 0.05, "loaded_tensors": 2, "loaded_params": 15, "fresh_tensors": 2}


def test_frozen_tensors_get_nothing_and_a_trained_tensor_without_gradient_gets_the_pull():
    model = two_layers()
    reg = plan_l2_sp(model, ["0.weight", "0.bias", "2.weight"], {"0.weight", "0.bias", "2.weight", "2.bias"},
                     alpha=1.0, beta=1.0, has_source=True)
    assert set(reg.anchors) == {"0.weight", "0.bias", "2.weight"} and reg.fresh == ["2.bias"]
    anchor = reg.anchors["0.weight"]
    assert anchor.data_ptr() != model[0].weight.data_ptr()  # a copy: training the weight does not move it
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[0].bias.requires_grad_(False)  # frozen now (unfrozen later by a schedule)
    reg.add_gradients(model)()
    assert torch.allclose(model[0].weight.grad, torch.ones_like(anchor))  # alpha (w - w_source), no task gradient
    assert model[0].bias.grad is None
    assert torch.equal(model[2].bias.grad, model[2].bias.detach())  # beta w
    assert torch.equal(model[2].weight.grad, torch.zeros_like(model[2].weight))  # at its source value


def test_the_pull_is_added_before_gradient_clipping():
    from transfer_pipeline.training.engine import Engine

    p = nn.Parameter(torch.ones(2))
    engine = Engine(torch.device("cpu"), "32", False, False, 1, 1.0, None)  # grad_clip 1.0

    def pull() -> None:
        p.grad = torch.tensor([3.0, 4.0])  # norm 5: clipping must see it

    engine.regularize = pull
    opt = torch.optim.SGD([p], lr=1.0)
    engine.step(opt, [p])
    assert torch.allclose(p.detach(), torch.tensor([1 - 0.6, 1 - 0.8]))


def test_nothing_loaded_that_trains_is_an_error_naming_the_fix():
    model = two_layers()
    with pytest.raises(UserError, match="this run has no source"):
        plan_l2_sp(model, [], {"2.weight"}, 0.01, 0.0, has_source=False)
    with pytest.raises(UserError, match=r"none of the loaded tensors ever trains \(only fresh ones do: 2.bias"):
        plan_l2_sp(model, ["0.weight", "0.bias"], {"2.weight", "2.bias"}, 0.01, 0.0, has_source=True)


@pytest.mark.parametrize("overrides, message", [
    (("optim.l2_sp.alpha=0.1",), "optim.l2_sp.alpha is set but optim.regularize is null"),
    (("optim.regularize=l2_sp", "optim.weight_decay=0.01"), "optim.weight_decay=0.01 with optim.regularize=l2_sp"),
    (("optim.regularize=l2_sp", "+optim.groups=[{params: [block2], weight_decay: 0.1}]"),
     r"optim.groups\[0\].weight_decay=0.1 with optim.regularize=l2_sp"),
    (("optim.regularize=l2_sp", "optim.l2_sp.alpha=-1"), r"optim.l2_sp.alpha=-1.0: must be a finite number >= 0"),
    (("optim.regularize=l2_sp", "optim.l2_sp.beta=inf"), r"optim.l2_sp.beta=inf: must be a finite number >= 0"),
    (("optim.regularize=l2_sp", "optim.l2_sp.alpha=0", "optim.l2_sp.beta=0"), "would do nothing"),
])
def test_l2_sp_settings_that_would_train_wrongly_or_do_nothing_are_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        compose_config(*overrides)


def test_the_defaults_fill_in():
    cfg = compose_config("optim.regularize=l2_sp", "optim.l2_sp.beta=0")
    assert cfg.optim.l2_sp.values() == (0.01, 0.0)
