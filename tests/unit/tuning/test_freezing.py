"""Unit tests for freezing.py and batchnorm.py: selectors -> requires_grad, BN policy, unfreeze schedule."""

from __future__ import annotations

import logging

import pytest
import torch

from transfer_pipeline.tuning.batchnorm import (
    apply_bn_policy,
    bn_modules,
    bn_param_names,
    format_bn_plan,
    frozen_bn_params,
    resolve_bn_modes,
)
from transfer_pipeline.errors import UserError
from transfer_pipeline.tuning.events import Event, Trigger
from transfer_pipeline.tuning.freezing import (
    freeze,
    initial_trainable,
    model_blocks,
    plan_freezing,
    resolve_schedule,
    set_requires_grad,
    unfreeze,
    until_names,
)
from transfer_pipeline.schema import (BatchNormMode, BatchNormOverride, BatchNormPolicy, FreezeConfig, GradualConfig,
                                      GradualOrder, RunConfig, TrainerConfig, UnfreezeEvent)

BN = {"stem.1.weight", "stem.1.bias", "block1.1.weight", "block1.1.bias", "block2.1.weight", "block2.1.bias"}


def cfg(trainable=None, frozen=(), bn="auto", schedule=()) -> FreezeConfig:
    return FreezeConfig(trainable=None if trainable is None else list(trainable), frozen=list(frozen),
                        bn=BatchNormPolicy(bn), schedule=[UnfreezeEvent(**e) for e in schedule])


def under(names, *modules) -> set[str]:
    return {n for n in names if n.split(".")[0] in modules}


def never(c: FreezeConfig) -> set[str]:
    """What plan_freezing passes for this model: the BN parameters when freeze.bn=frozen."""
    return BN if c.bn.value == "frozen" else set()


def start(names, c: FreezeConfig) -> set[str]:
    return initial_trainable(names, c, never(c))


def schedule(names, c: FreezeConfig, trainable, epochs):
    return resolve_schedule(names, c, trainable, epochs, never(c))


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
    assert start(names, cfg()) == set(names)


def test_trainable_selects_only_those(names):
    assert start(names, cfg(trainable=["head"])) == {"head.weight", "head.bias"}
    assert start(names, cfg(trainable=["block2", "head.*"])) == under(names, "block2", "head")


def test_frozen_removes_from_everything(names):
    got = start(names, cfg(frozen=["stem", "block1"]))
    assert got == under(names, "block2", "head")


def test_frozen_wins_over_trainable(names):
    got = start(names, cfg(trainable=["block2", "head"], frozen=["block2.1", "head.bias"]))
    assert got == {"block2.0.weight", "head.weight"}


def test_trainable_empty_list_means_nothing_trainable(names):
    assert start(names, cfg(trainable=[])) == set()


def test_regex_selectors_work_in_freeze(names):
    got = start(names, cfg(trainable=[r"re:block\d\.0\.weight"]))
    assert got == {"block1.0.weight", "block2.0.weight"}


def test_bn_frozen_drops_bn_params(names):
    got = start(names, cfg(bn="frozen"))
    assert got == set(names) - BN
    got = start(names, cfg(trainable=["block2"], bn="frozen"))
    assert got == {"block2.0.weight"}


@pytest.mark.parametrize("bn", ["eval", "train"])
def test_other_bn_policies_keep_bn_params(names, bn):
    assert start(names, cfg(bn=bn)) == set(names)


def test_trainable_selector_matching_nothing_is_error(names):
    with pytest.raises(UserError, match=r"freeze\.trainable: selector 'blok2' matches no parameter.*block2"):
        start(names, cfg(trainable=["head", "blok2"]))


def test_frozen_selector_matching_nothing_is_error(names):
    with pytest.raises(UserError, match=r"freeze\.frozen: selector 'layer4' matches no parameter"):
        start(names, cfg(frozen=["layer4"]))


def test_frozen_head_does_not_freeze_decode_head():
    names = ["decode_head.weight", "head.weight"]
    assert initial_trainable(names, cfg(frozen=["head"]), set()) == {"decode_head.weight"}


# --- resolve_schedule --------------------------------------------------------------------------------

def test_schedule_events_in_epoch_order_with_only_new_names(names):
    c = cfg(frozen=["stem", "block1", "block2"], schedule=[
        {"epoch": 3, "unfreeze": ["block1", "block2"], "lr": 1e-5},
        {"epoch": 1, "unfreeze": ["block2"], "lr": 1e-4},
    ])
    trainable = start(names, c)
    events = schedule(names, c, trainable, epochs=5)
    assert [e.trigger.epoch for e in events] == [1, 3]
    assert events[0].names == ("block2.0.weight", "block2.1.weight", "block2.1.bias")
    assert events[0].lr == 1e-4
    assert events[0].selectors == ("block2",)
    # block2 is already trainable by epoch 3, so the later event brings only block1
    assert events[1].names == ("block1.0.weight", "block1.1.weight", "block1.1.bias")
    assert events[1].selectors == ("block1", "block2")
    assert events[1].lr == 1e-5


def test_schedule_event_lr_defaults_to_none(names):
    c = cfg(frozen=["stem"], schedule=[{"epoch": 0, "unfreeze": ["stem"]}])
    (ev,) = schedule(names, c, start(names, c), epochs=1)
    assert ev.lr is None
    assert set(ev.names) == under(names, "stem")


def test_empty_schedule(names):
    assert schedule(names, cfg(), set(names), epochs=3) == []


@pytest.mark.parametrize("epoch", [3, 10])
def test_schedule_event_past_last_epoch_is_error(names, epoch):
    c = cfg(frozen=["stem"], schedule=[{"epoch": 1, "unfreeze": ["head"]}, {"epoch": epoch, "unfreeze": ["stem"]}])
    with pytest.raises(UserError, match=rf"freeze\.schedule\[1\]\.epoch={epoch}: the run trains epochs 0\.\.2 "
                                        r"\(trainer\.epochs=3\)"):
        RunConfig(model={"_target_": "x"}, freeze=c, trainer=TrainerConfig(epochs=3))


def test_schedule_negative_epoch_is_error_that_does_not_say_lower_it(names):
    with pytest.raises(UserError, match=r"freeze\.schedule\[0\]\.epoch=-1: epochs count from 0") as e:
        cfg(frozen=["stem"], schedule=[{"epoch": -1, "unfreeze": ["stem"]}])
    assert "Lower" not in str(e.value)


def test_schedule_last_epoch_is_allowed(names):
    c = cfg(frozen=["stem"], schedule=[{"epoch": 2, "unfreeze": ["stem"]}])
    (ev,) = schedule(names, c, start(names, c), epochs=3)
    assert ev.trigger.epoch == 2


def test_schedule_unmatched_selector_is_error_with_original_index(names):
    # events are checked in epoch order, but the message must name the event as written
    c = cfg(frozen=["stem", "block1"], schedule=[{"epoch": 2, "unfreeze": ["block1"]},
                                                  {"epoch": 1, "unfreeze": ["sterm"]}])
    with pytest.raises(UserError, match=r"freeze\.schedule\[1\]\.unfreeze: selector 'sterm' matches no parameter"
                                        r".*stem"):
        schedule(names, c, start(names, c), epochs=3)


def test_schedule_already_trainable_warns(names, caplog):
    c = cfg(frozen=["stem"], schedule=[{"epoch": 1, "unfreeze": ["head"]}])
    trainable = start(names, c)
    with caplog.at_level(logging.WARNING, logger="transfer_pipeline.tuning.freezing"):
        (ev,) = schedule(names, c, trainable, epochs=3)
    assert ev.names == ()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "freeze.schedule[0]" in warnings[0].getMessage()
    assert "head" in warnings[0].getMessage()
    assert "already trainable" in warnings[0].getMessage()


def test_schedule_no_warning_when_something_new(names, caplog):
    c = cfg(frozen=["stem"], schedule=[{"epoch": 1, "unfreeze": ["stem", "head"]}])
    with caplog.at_level(logging.WARNING, logger="transfer_pipeline.tuning.freezing"):
        (ev,) = schedule(names, c, start(names, c), epochs=3)
    assert set(ev.names) == under(names, "stem")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_schedule_bn_frozen_never_unfreezes_bn(names):
    c = cfg(frozen=["block2"], bn="frozen", schedule=[{"epoch": 1, "unfreeze": ["block2"]}])
    trainable = start(names, c)
    (ev,) = schedule(names, c, trainable, epochs=3)
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
    set_requires_grad(model, start(names, cfg(frozen=["stem", "block1"])))
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
    set_requires_grad(model, start(names, cfg(frozen=["stem", "block1"])))
    model.train()
    apply_bn_policy(model, "eval")
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    model(torch.randn(8, 1, 8, 8))
    after = model.state_dict()
    for k in ("stem.1.running_mean", "stem.1.running_var", "block1.1.running_mean", "block1.1.num_batches_tracked"):
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["block2.1.running_mean"], after["block2.1.running_mean"])


# --- freeze.until ------------------------------------------------------------------------------------

def test_until_freezes_everything_up_to_and_including_the_module(names):
    assert until_names(names, "block1") == [n for n in names if n.split(".")[0] in ("stem", "block1")]
    assert start(names, FreezeConfig(until="block1")) == under(names, "block2", "head")
    assert start(names, FreezeConfig(until="head")) == set()


def test_until_a_nested_module_or_a_single_tensor(names):
    assert until_names(names, "block1.0") == ["stem.0.weight", "stem.1.weight", "stem.1.bias", "block1.0.weight"]
    assert until_names(names, "stem.1.weight") == ["stem.0.weight", "stem.1.weight"]


def test_until_combines_with_trainable_and_frozen(names):
    got = start(names, FreezeConfig(trainable=["block1", "block2", "head"], frozen=["head.bias"], until="block1"))
    assert got == under(names, "block2") | {"head.weight"}


def test_until_matching_nothing_is_error(names):
    with pytest.raises(UserError, match=r"freeze\.until: selector 'layer3' matches no parameter"):
        start(names, FreezeConfig(until="layer3"))


# --- blocks --------------------------------------------------------------------------------------------

def test_blocks_default_to_top_level_modules_in_module_order(names):
    blocks = model_blocks(names)
    assert [b.name for b in blocks] == ["stem", "block1", "block2", "head"]
    assert blocks[2].names == ("block2.0.weight", "block2.1.weight", "block2.1.bias")
    assert [n for b in blocks for n in b.names] == names


def test_top_level_parameters_join_the_first_block():
    names = ["cls_token", "patch.weight", "blocks.0.w", "blocks.1.w", "pos_embed", "head.weight"]
    blocks = model_blocks(names)
    assert [(b.name, b.names) for b in blocks] == [("patch", ("cls_token", "patch.weight", "pos_embed")),
                                                  ("blocks", ("blocks.0.w", "blocks.1.w")), ("head", ("head.weight",))]


def test_custom_blocks_from_selectors_and_lists(names):
    blocks = model_blocks(names, [["stem", "block1"], "block2", "head"])
    assert [b.name for b in blocks] == ["stem+block1", "block2", "head"]
    assert blocks[0].names == tuple(n for n in names if n.split(".")[0] in ("stem", "block1"))


def test_custom_blocks_overlap_or_bad_entries_are_errors(names):
    with pytest.raises(UserError, match=r"freeze\.blocks\[1\]: 'block2\.0\.weight' is already in block freeze\.blocks\[0\]"):
        model_blocks(names, ["block2", "block2.0"])
    with pytest.raises(UserError, match=r"freeze\.blocks\[0\]: selector 'blok1' matches no parameter.*block1"):
        model_blocks(names, ["blok1"])
    with pytest.raises(UserError, match=r"freeze\.blocks\[0\]=3: a block is a selector or a list of selectors"):
        model_blocks(names, [3])


# --- BN modes per selector -----------------------------------------------------------------------------

def bn_cfg(bn="auto", overrides=()) -> FreezeConfig:
    return FreezeConfig(bn=BatchNormPolicy(bn), bn_overrides=[BatchNormOverride(params=list(p), mode=BatchNormMode(m))
                                                             for p, m in overrides])


@pytest.mark.parametrize(("bn", "mode"), [("eval", "auto"), ("train", "train"), ("frozen", "frozen")])
def test_bn_modes_from_the_global_policy(model, bn, mode):
    assert resolve_bn_modes(model, bn_cfg(bn)) == {"stem.1": mode, "block1.1": mode, "block2.1": mode}


def test_bn_overrides_select_layers_by_module_or_parameter_name(model):
    modes = resolve_bn_modes(model, bn_cfg("eval", [(["stem"], "train"), (["block2.1.weight"], "frozen")]))
    assert modes == {"stem.1": "train", "block1.1": "auto", "block2.1": "frozen"}
    assert frozen_bn_params(model, modes) == {"block2.1.weight", "block2.1.bias"}


def test_bn_override_matching_no_bn_layer_is_error(model):
    with pytest.raises(UserError, match=r"freeze\.bn_overrides\[0\]\.params: selector 'head' matches no BatchNorm layer"):
        resolve_bn_modes(model, bn_cfg("eval", [(["head"], "frozen")]))
    with pytest.raises(UserError, match=r"selector 'block3' matches no BatchNorm layer\. Closest names: block2\.1, block1\.1\."):
        resolve_bn_modes(model, bn_cfg("eval", [(["block3"], "frozen")]))


def test_overlapping_bn_overrides_are_error(model):
    with pytest.raises(UserError, match=r"freeze\.bn_overrides\[1\]\.params: BatchNorm layer 'block2\.1' is already set "
                                        r"by freeze\.bn_overrides\[0\]"):
        resolve_bn_modes(model, bn_cfg("eval", [(["block2"], "frozen"), (["*"], "train")]))


def test_apply_bn_policy_per_layer_modes(model, names):
    set_requires_grad(model, under(names, "block1", "block2", "head"))
    model.train()
    held = apply_bn_policy(model, {"stem.1": "train", "block1.1": "eval", "block2.1": "auto"})
    assert held == ["block1.1"]
    assert bn_training(model) == {"stem.1": True, "block1.1": False, "block2.1": True}
    set_requires_grad(model, under(names, "head"))
    model.train()
    assert apply_bn_policy(model, {"stem.1": "train", "block1.1": "eval", "block2.1": "auto"}) == ["block1.1", "block2.1"]


def test_bn_frozen_override_drops_its_params_from_trainable_and_events(model, names):
    c = FreezeConfig(bn_overrides=[BatchNormOverride(params=["block2"], mode=BatchNormMode.frozen)], frozen=["block2"],
                     schedule=[UnfreezeEvent(epoch=1, unfreeze=["block2"])])
    plan = plan_freezing(model, c, epochs=3)
    assert plan.never == {"block2.1.weight", "block2.1.bias"}
    assert plan.events[0].names == ("block2.0.weight",)


def test_bn_plan_is_stated(model, names):
    set_requires_grad(model, under(names, "block2", "head"))
    text = format_bn_plan(model, {"stem.1": "auto", "block1.1": "auto", "block2.1": "frozen"}, "auto")
    assert text == ("BatchNorm (freeze.bn=auto: statistics fixed while all of a layer's parameters are frozen): "
                    "eval 2 (stem.1, block1.1); frozen 1 (block2.1); set by freeze.bn_overrides: block2.1=frozen")


# --- schedule events: step, re-freeze, checks -----------------------------------------------------------

def ev_cfg(*events, **kw) -> FreezeConfig:
    return FreezeConfig(schedule=[UnfreezeEvent(**e) for e in events], **kw)


def test_refreeze_event_freezes_what_is_trainable(names):
    c = ev_cfg({"epoch": 1, "freeze": ["block2"]}, {"epoch": 2, "unfreeze": ["block2"], "lr": 1e-4})
    first, second = schedule(names, c, set(names), epochs=3)
    assert first.frozen == ("block2.0.weight", "block2.1.weight", "block2.1.bias") and first.names == ()
    assert second.names == first.frozen
    assert first.describe() == "Before epoch 2 (epoch: 1): froze block2 (3 tensors)"
    assert second.describe() == "Before epoch 3 (epoch: 2): unfroze block2 (3 tensors)"


def test_freeze_and_unfreeze_in_one_event(names):
    c = ev_cfg({"epoch": 1, "freeze": ["block1"], "unfreeze": ["stem"]}, frozen=["stem"])
    (ev,) = schedule(names, c, start(names, c), epochs=2)
    assert set(ev.names) == under(names, "stem") and set(ev.frozen) == under(names, "block1")
    assert ev.describe() == "Before epoch 2 (epoch: 1): unfroze stem (3 tensors); froze block1 (3 tensors)"


def test_refreezing_what_is_frozen_warns(names, caplog):
    c = ev_cfg({"epoch": 1, "freeze": ["stem"]}, frozen=["stem"])
    with caplog.at_level(logging.WARNING, logger="transfer_pipeline.tuning.freezing"):
        (ev,) = schedule(names, c, start(names, c), epochs=2)
    assert ev.frozen == ()
    assert [r.getMessage() for r in caplog.records] == [
        "freeze.schedule[0]: everything it freezes (stem) is already frozen at epoch 1."]


def test_step_events_sort_by_step(names):
    c = ev_cfg({"step": 30, "unfreeze": ["stem"]}, {"step": 5, "unfreeze": ["block1"]}, frozen=["stem", "block1"])
    events = schedule(names, c, start(names, c), epochs=2)
    assert [(e.trigger.step, e.trigger.epoch, e.where) for e in events] == [(5, None, "freeze.schedule[1]"), (30, None, "freeze.schedule[0]")]
    assert events[0].describe() == "Step 5: unfroze block1 (3 tensors)"


@pytest.mark.parametrize(("event", "match"), [
    ({"unfreeze": ["stem"]}, r"freeze\.schedule\[0\]: give epoch: N .* or step: N .*, one of them"),
    ({"epoch": 1, "step": 3, "unfreeze": ["stem"]}, r"freeze\.schedule\[0\]: give epoch: N .*, not both"),
    ({"step": -1, "unfreeze": ["stem"]}, r"freeze\.schedule\[0\]\.step=-1: steps count from 0"),
    ({"epoch": 1}, r"freeze\.schedule\[0\]: does nothing; give unfreeze: \[selectors\] and/or freeze"),
    ({"epoch": 1, "unfreeze": ["stem"], "lr": 0.1, "lr_mult": 0.5}, r"freeze\.schedule\[0\]: sets both lr=0\.1 and lr_mult=0\.5"),
    ({"epoch": 1, "unfreeze": ["stem"], "lr": -0.1}, r"freeze\.schedule\[0\]\.lr=-0\.1: must be a finite number >= 0"),
    ({"epoch": 1, "unfreeze": ["stem"], "warmup_steps": -2}, r"freeze\.schedule\[0\]\.warmup_steps=-2"),
    ({"epoch": 1, "freeze": ["head"], "lr": 0.1}, r"freeze\.schedule\[0\]: lr/lr_mult/warmup_steps apply to what an "
                                                  r"event unfreezes, and this one unfreezes nothing"),
    ({"epoch": 1, "freeze": ["block2"], "unfreeze": ["block2.0"]}, r"freeze\.schedule\[0\]: unfreezes and freezes "
                                                                   r"'block2\.0\.weight' at once"),
    ({"epoch": 1, "freeze": ["blok2"]}, r"freeze\.schedule\[0\]\.freeze: selector 'blok2' matches no parameter"),
])
def test_bad_events_are_errors(names, event, match):
    with pytest.raises(UserError, match=match):
        c = ev_cfg(event, frozen=["stem"])  # values: the schema; selectors: resolve_schedule
        schedule(names, c, start(names, c), epochs=3)


def test_mixing_epoch_and_step_events_is_error(names):
    with pytest.raises(UserError, match=r"freeze\.schedule: mixes epoch: and step: events.*use one kind"):
        ev_cfg({"epoch": 1, "unfreeze": ["stem"]}, {"step": 10, "unfreeze": ["block1"]}, frozen=["stem", "block1"])


def test_unfreezing_only_frozen_bn_params_warns(names, caplog):
    c = ev_cfg({"epoch": 1, "unfreeze": ["block2.1"]}, frozen=["block2"], bn=BatchNormPolicy.frozen)
    with caplog.at_level(logging.WARNING, logger="transfer_pipeline.tuning.freezing"):
        (ev,) = schedule(names, c, start(names, c), epochs=3)
    assert ev.names == ()
    assert "BatchNorm parameters that freeze.bn / freeze.bn_overrides keep frozen" in caplog.records[0].getMessage()


def test_freeze_drops_the_gradient(model):
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    assert model.head.weight.grad is not None
    freeze(model, ["head.weight"])
    assert model.head.weight.grad is None and not model.head.weight.requires_grad


# --- gradual unfreezing ---------------------------------------------------------------------------------

def gradual(names, epochs=6, trainable=("head",), **g):
    c = FreezeConfig(trainable=list(trainable), gradual=GradualConfig(**g))
    return schedule(names, c, start(names, c), epochs)


def test_gradual_unfreezes_one_block_per_epoch_from_the_head(names):
    events = gradual(names, every=1, order=GradualOrder.head_first)
    assert [(e.trigger.epoch, e.selectors, e.where) for e in events] == [
        (1, ("block2",), "freeze.gradual"), (2, ("block1",), "freeze.gradual"), (3, ("stem",), "freeze.gradual")]
    assert set(events[0].names) == under(names, "block2")


def test_gradual_every_start_and_from_stem(names):
    events = gradual(names, every=2, start=1, lr_mult=0.1, warmup_steps=3, order=GradualOrder.stem_first)
    assert [(e.trigger.epoch, e.selectors[0]) for e in events] == [(1, "stem"), (3, "block1"), (5, "block2")]
    assert {(e.lr_mult, e.warmup_steps) for e in events} == {(0.1, 3)}


def test_gradual_skips_blocks_already_trainable(names):
    events = gradual(names, trainable=("block1", "head"), every=1)
    assert [(e.trigger.epoch, e.selectors[0]) for e in events] == [(1, "block2"), (2, "stem")]


@pytest.mark.parametrize(("g", "match"), [
    ({"every": 0}, r"freeze\.gradual\.every=0: unfreeze one block every N epochs, N >= 1"),
    ({"start": -1}, r"freeze\.gradual\.start=-1"),
    ({"lr": 0.1, "lr_mult": 0.1}, r"freeze\.gradual: sets both lr=0\.1 and lr_mult=0\.1"),
])
def test_bad_gradual_is_error(names, g, match):
    with pytest.raises(UserError, match=match):
        gradual(names, **g)


def test_gradual_with_nothing_frozen_warns(names, caplog):
    with caplog.at_level(logging.WARNING, logger="transfer_pipeline.tuning.freezing"):
        assert gradual(names, trainable=["*"], every=1) == []
    assert "freeze.gradual: every block is already trainable at the start" in caplog.records[0].getMessage()


def test_gradual_with_step_events_is_error(names):
    with pytest.raises(UserError, match=r"mixes epoch: and step: events \(freeze\.gradual counts as epoch events\)"):
        FreezeConfig(trainable=["head"], gradual=GradualConfig(every=1), schedule=[UnfreezeEvent(step=3, unfreeze=["stem"])])


@pytest.mark.parametrize(("override", "match"), [
    ("freeze.gradual.evry=1", r"freeze\.gradual\.evry"),
    ("freeze.gradual.from=head", r"freeze\.gradual\.from"),  # the old spelling of `order`
    ("freeze.gradual.order=top", r"freeze\.gradual\.order=top"),
    ("freeze.gradual.every=abc", r"freeze\.gradual\.every=abc"),
])
def test_unknown_gradual_keys_and_values_fail_at_composition(compose, override, match):
    with pytest.raises(Exception, match=match):
        compose("freeze=gradual", override)


def test_gradual_is_switched_on_from_the_command_line_by_its_every(compose, names):
    from transfer_pipeline.model_parts import expand_freeze, model_parts
    from transfer_pipeline.models import DigitsCNN

    cfg = compose("freeze.gradual.every=2", "freeze.schedule=[]")
    assert cfg.freeze.gradual.enabled and cfg.freeze.gradual.order == GradualOrder.head_first
    c = expand_freeze(cfg.freeze, model_parts(DigitsCNN()))  # "@head" in the group file, as the recipe expands it
    events = schedule(names, c, start(names, c), epochs=6)
    assert [(e.trigger.epoch, e.selectors) for e in events] == [(2, ("block2",)), (4, ("block1",))]
    assert not compose().freeze.gradual.enabled


def test_freeze_bn_eval_is_the_old_spelling_of_auto(model, names):
    from transfer_pipeline.tuning.batchnorm import resolve_bn_modes

    assert resolve_bn_modes(model, FreezeConfig(bn=BatchNormPolicy.eval)) == resolve_bn_modes(
        model, FreezeConfig(bn=BatchNormPolicy.auto)) == {"stem.1": "auto", "block1.1": "auto", "block2.1": "auto"}


def test_resolved_event_defaults_keep_the_old_fields():
    ev = Event(trigger=Trigger(epoch=1), selectors=("head",), names=())
    assert (ev.trigger.step, ev.frozen, ev.sets_lr, ev.when) == (None, (), False, "epoch 1")
