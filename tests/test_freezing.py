"""Unit tests for transfer_pipeline.freezing: selectors -> requires_grad, BN policy, unfreeze schedule."""

from __future__ import annotations

import logging

import pytest
import torch

from transfer_pipeline.errors import UserError
from transfer_pipeline.freezing import (
    apply_bn_policy,
    bn_modules,
    bn_param_names,
    initial_trainable,
    resolve_schedule,
    set_requires_grad,
    unfreeze,
)
from transfer_pipeline.models import DigitsCNN
from transfer_pipeline.schema import BatchNormPolicy, FreezeConfig, UnfreezeEvent

BN = {"stem.1.weight", "stem.1.bias", "block1.1.weight", "block1.1.bias", "block2.1.weight", "block2.1.bias"}


@pytest.fixture
def model() -> DigitsCNN:
    torch.manual_seed(0)
    return DigitsCNN(num_classes=5)


@pytest.fixture
def names(model) -> list[str]:
    return [n for n, _ in model.named_parameters()]


def cfg(trainable=None, frozen=(), bn="eval", schedule=()) -> FreezeConfig:
    return FreezeConfig(trainable=None if trainable is None else list(trainable), frozen=list(frozen),
                        bn=BatchNormPolicy(bn), schedule=[UnfreezeEvent(**e) for e in schedule])


def under(names, *modules) -> set[str]:
    return {n for n in names if n.split(".")[0] in modules}


# --- model helpers -----------------------------------------------------------------------------------

def test_digits_cnn_parameter_names(names):
    # the other tests rely on this layout
    assert names == ["stem.0.weight", "stem.1.weight", "stem.1.bias", "block1.0.weight", "block1.1.weight",
                     "block1.1.bias", "block2.0.weight", "block2.1.weight", "block2.1.bias", "head.weight", "head.bias"]


def test_bn_modules_and_param_names(model):
    assert list(bn_modules(model)) == ["stem.1", "block1.1", "block2.1"]
    assert bn_param_names(model) == BN


def test_bn_param_names_for_bare_bn_module():
    bn = torch.nn.BatchNorm1d(4)
    assert bn_param_names(bn) == {"weight", "bias"}
    assert bn_param_names(torch.nn.BatchNorm1d(4, affine=False)) == set()


# --- initial_trainable -------------------------------------------------------------------------------

def test_default_everything_trainable(names):
    assert initial_trainable(names, cfg(), BN) == set(names)


def test_trainable_selects_only_those(names):
    assert initial_trainable(names, cfg(trainable=["head"]), BN) == {"head.weight", "head.bias"}
    assert initial_trainable(names, cfg(trainable=["block2", "head.*"]), BN) == under(names, "block2", "head")


def test_frozen_removes_from_everything(names):
    got = initial_trainable(names, cfg(frozen=["stem", "block1"]), BN)
    assert got == under(names, "block2", "head")


def test_frozen_wins_over_trainable(names):
    got = initial_trainable(names, cfg(trainable=["block2", "head"], frozen=["block2.1", "head.bias"]), BN)
    assert got == {"block2.0.weight", "head.weight"}


def test_trainable_empty_list_means_nothing_trainable(names):
    assert initial_trainable(names, cfg(trainable=[]), BN) == set()


def test_regex_selectors_work_in_freeze(names):
    got = initial_trainable(names, cfg(trainable=[r"re:block\d\.0\.weight"]), BN)
    assert got == {"block1.0.weight", "block2.0.weight"}


def test_bn_frozen_drops_bn_params(names):
    got = initial_trainable(names, cfg(bn="frozen"), BN)
    assert got == set(names) - BN
    got = initial_trainable(names, cfg(trainable=["block2"], bn="frozen"), BN)
    assert got == {"block2.0.weight"}


@pytest.mark.parametrize("bn", ["eval", "train"])
def test_other_bn_policies_keep_bn_params(names, bn):
    assert initial_trainable(names, cfg(bn=bn), BN) == set(names)


def test_trainable_selector_matching_nothing_is_error(names):
    with pytest.raises(UserError, match=r"freeze\.trainable: selector 'blok2' matches no parameter.*block2"):
        initial_trainable(names, cfg(trainable=["head", "blok2"]), BN)


def test_frozen_selector_matching_nothing_is_error(names):
    with pytest.raises(UserError, match=r"freeze\.frozen: selector 'layer4' matches no parameter"):
        initial_trainable(names, cfg(frozen=["layer4"]), BN)


def test_frozen_head_does_not_freeze_decode_head():
    names = ["decode_head.weight", "head.weight"]
    assert initial_trainable(names, cfg(frozen=["head"]), set()) == {"decode_head.weight"}


# --- resolve_schedule --------------------------------------------------------------------------------

def test_schedule_events_in_epoch_order_with_only_new_names(names):
    c = cfg(frozen=["stem", "block1", "block2"], schedule=[
        {"epoch": 3, "unfreeze": ["block1", "block2"], "lr": 1e-5},
        {"epoch": 1, "unfreeze": ["block2"], "lr": 1e-4},
    ])
    trainable = initial_trainable(names, c, BN)
    events = resolve_schedule(names, c, trainable, epochs=5, bn_params=BN)
    assert [e.epoch for e in events] == [1, 3]
    assert events[0].names == ("block2.0.weight", "block2.1.weight", "block2.1.bias")
    assert events[0].lr == 1e-4
    assert events[0].selectors == ("block2",)
    # block2 is already trainable by epoch 3, so the later event brings only block1
    assert events[1].names == ("block1.0.weight", "block1.1.weight", "block1.1.bias")
    assert events[1].selectors == ("block1", "block2")
    assert events[1].lr == 1e-5


def test_schedule_event_lr_defaults_to_none(names):
    c = cfg(frozen=["stem"], schedule=[{"epoch": 0, "unfreeze": ["stem"]}])
    (ev,) = resolve_schedule(names, c, initial_trainable(names, c, BN), epochs=1, bn_params=BN)
    assert ev.lr is None
    assert set(ev.names) == under(names, "stem")


def test_empty_schedule(names):
    assert resolve_schedule(names, cfg(), set(names), epochs=3, bn_params=BN) == []


@pytest.mark.parametrize("epoch", [3, 10])
def test_schedule_event_past_last_epoch_is_error(names, epoch):
    c = cfg(frozen=["stem"], schedule=[{"epoch": 1, "unfreeze": ["head"]}, {"epoch": epoch, "unfreeze": ["stem"]}])
    with pytest.raises(UserError, match=rf"freeze\.schedule\[1\]\.epoch={epoch}: the run trains epochs 0\.\.2 "
                                        r"\(trainer\.epochs=3\)"):
        resolve_schedule(names, c, initial_trainable(names, c, BN), epochs=3, bn_params=BN)


def test_schedule_negative_epoch_is_error(names):
    c = cfg(frozen=["stem"], schedule=[{"epoch": -1, "unfreeze": ["stem"]}])
    with pytest.raises(UserError, match=r"freeze\.schedule\[0\]\.epoch=-1"):
        resolve_schedule(names, c, set(), epochs=3, bn_params=BN)


def test_schedule_last_epoch_is_allowed(names):
    c = cfg(frozen=["stem"], schedule=[{"epoch": 2, "unfreeze": ["stem"]}])
    (ev,) = resolve_schedule(names, c, initial_trainable(names, c, BN), epochs=3, bn_params=BN)
    assert ev.epoch == 2


def test_schedule_unmatched_selector_is_error_with_original_index(names):
    # events are checked in epoch order, but the message must name the event as written
    c = cfg(frozen=["stem", "block1"], schedule=[{"epoch": 2, "unfreeze": ["block1"]},
                                                  {"epoch": 1, "unfreeze": ["sterm"]}])
    with pytest.raises(UserError, match=r"freeze\.schedule\[1\]\.unfreeze: selector 'sterm' matches no parameter"
                                        r".*stem"):
        resolve_schedule(names, c, initial_trainable(names, c, BN), epochs=3, bn_params=BN)


def test_schedule_already_trainable_warns(names, caplog):
    c = cfg(frozen=["stem"], schedule=[{"epoch": 1, "unfreeze": ["head"]}])
    trainable = initial_trainable(names, c, BN)
    with caplog.at_level(logging.WARNING, logger="transfer_pipeline.freezing"):
        (ev,) = resolve_schedule(names, c, trainable, epochs=3, bn_params=BN)
    assert ev.names == ()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "freeze.schedule[0]" in warnings[0].getMessage()
    assert "head" in warnings[0].getMessage()
    assert "already trainable" in warnings[0].getMessage()


def test_schedule_no_warning_when_something_new(names, caplog):
    c = cfg(frozen=["stem"], schedule=[{"epoch": 1, "unfreeze": ["stem", "head"]}])
    with caplog.at_level(logging.WARNING, logger="transfer_pipeline.freezing"):
        (ev,) = resolve_schedule(names, c, initial_trainable(names, c, BN), epochs=3, bn_params=BN)
    assert set(ev.names) == under(names, "stem")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_schedule_bn_frozen_never_unfreezes_bn(names):
    c = cfg(frozen=["block2"], bn="frozen", schedule=[{"epoch": 1, "unfreeze": ["block2"]}])
    trainable = initial_trainable(names, c, BN)
    (ev,) = resolve_schedule(names, c, trainable, epochs=3, bn_params=BN)
    assert ev.names == ("block2.0.weight",)


# --- requires_grad -----------------------------------------------------------------------------------

def test_set_requires_grad_and_unfreeze(model, names):
    set_requires_grad(model, {"head.weight", "head.bias"})
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
    unfreeze(model, ["block2.0.weight"])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.weight", "head.bias",
                                                                           "block2.0.weight"}


# --- BN policy ---------------------------------------------------------------------------------------

def bn_training(model) -> dict[str, bool]:
    return {n: m.training for n, m in bn_modules(model).items()}


def test_bn_eval_keeps_bn_of_frozen_blocks_in_eval(model, names):
    set_requires_grad(model, initial_trainable(names, cfg(frozen=["stem", "block1"]), BN))
    model.train()
    held = apply_bn_policy(model, "eval")
    assert held == ["stem.1", "block1.1"]
    assert bn_training(model) == {"stem.1": False, "block1.1": False, "block2.1": True}
    # the rest of the model stays in training mode
    assert model.training and model.stem.training and model.stem[0].training and model.head.training


def test_bn_eval_partly_trainable_bn_keeps_training(model):
    set_requires_grad(model, {"stem.1.bias"})  # one of the two affine params trainable
    model.train()
    held = apply_bn_policy(model, "eval")
    assert "stem.1" not in held
    assert bn_training(model)["stem.1"] is True


def test_bn_train_holds_none(model):
    set_requires_grad(model, set())
    model.train()
    assert apply_bn_policy(model, "train") == []
    assert all(bn_training(model).values())


def test_bn_frozen_holds_all(model):
    set_requires_grad(model, {n for n, _ in model.named_parameters()})  # even fully trainable
    model.train()
    assert apply_bn_policy(model, "frozen") == ["stem.1", "block1.1", "block2.1"]
    assert not any(bn_training(model).values())
    assert model.head.training


def test_bn_eval_keeps_running_stats_of_frozen_blocks(model, names):
    set_requires_grad(model, initial_trainable(names, cfg(frozen=["stem", "block1"]), BN))
    model.train()
    apply_bn_policy(model, "eval")
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    model(torch.randn(8, 1, 8, 8))
    after = model.state_dict()
    for k in ("stem.1.running_mean", "stem.1.running_var", "block1.1.running_mean", "block1.1.num_batches_tracked"):
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["block2.1.running_mean"], after["block2.1.running_mean"])
