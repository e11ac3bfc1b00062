"""Freeze schedules and parameter groups with adapters (tuning/adapters.py): selectors in the target's names,
translated to the adapted model's; base layers that freeze trains become peft's modules_to_save."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transfer_pipeline.errors import UserError
from transfer_pipeline.schema import AdapterMethod, AdaptersConfig, FreezeConfig, OptimConfig
from transfer_pipeline.schema.tuning import GradualConfig, ParamGroupConfig, UnfreezeEvent
from transfer_pipeline.tuning.adapter_tuning import adapter_freeze_plan, adapter_groups, adapter_no_decay, name_view
from transfer_pipeline.tuning.adapters import inject, plan_adapters, target_name

LORA = AdaptersConfig(method=AdapterMethod.lora, rank=2, lr=0.04)
LATER = FreezeConfig(trainable=["head"], schedule=[UnfreezeEvent(epoch=1, unfreeze=["block2"], lr=0.002)])


def cnn():
    from transfer_pipeline.models import DigitsCNN

    torch.manual_seed(0)
    return DigitsCNN(num_classes=5)


def adapted(freeze: FreezeConfig = LATER, targets=None, epochs: int = 3):
    model = cnn()
    plan = plan_adapters(model, LORA, targets, freeze, ["head"])
    inject(model, plan)
    return model, plan, adapter_freeze_plan(model, freeze, plan, epochs)


def test_a_layer_an_event_unfreezes_is_saved_with_the_adapter_and_starts_frozen():
    model, plan, frozen = adapted()
    assert plan.targets == ["stem.0", "block1.0"]  # targets=null leaves out what freeze trains in full
    assert plan.head == ["block2.0", "block2.1", "head"] and plan.layers == ["block2.0", "block2.1"]
    assert plan.later == {"block2.0": "freeze.schedule[0].unfreeze", "block2.1": "freeze.schedule[0].unfreeze"}
    assert "block2.0, block2.1 from freeze.schedule[0].unfreeze (frozen until then)" in plan.describe()
    assert plan.head_params == 32 * 64 * 9 + 2 * 64 + 64 * 5 + 5
    assert not any("block2" in n for n in frozen.trainable) and "head.modules_to_save.default.weight" in frozen.trainable
    (event,) = frozen.events
    assert event.names == ("block2.0.modules_to_save.default.weight", "block2.1.modules_to_save.default.weight",
                           "block2.1.modules_to_save.default.bias") and event.lr == 0.002


def test_names_translate_both_ways():
    model, plan, _ = adapted()
    assert target_name("block2.1.modules_to_save.default.bias", plan) == "block2.1.bias"
    assert target_name("stem.0.base_layer.weight", plan) == "stem.0.weight"
    assert target_name("block2.1.original_module.bias", plan) is None  # peft's frozen copy
    assert target_name("stem.0.lora_A.default.weight", plan) is None  # an adapter
    assert target_name("stem.1.weight", plan) == "stem.1.weight"
    view = name_view(model, plan)
    assert view.names == [n for n, _ in cnn().named_parameters()]  # the target's names, in its order
    assert view.adapted["head.weight"] == "head.modules_to_save.default.weight"
    assert view.owned(["block1.0.weight"]) == ["block1.0.base_layer.weight", "block1.0.lora_A.default.weight",
                                               "block1.0.lora_B.default.weight"]


def test_gradual_unfreezes_the_blocks_without_adapters():
    freeze = FreezeConfig(trainable=["head"], gradual=GradualConfig(every=1), blocks=["stem.1", "block2", "head"])
    model, plan, frozen = adapted(freeze, targets=["stem.0", "block1"])
    assert plan.head == ["stem.1", "block2.0", "block2.1", "head"]
    assert [(ev.trigger.epoch, ev.names[0]) for ev in frozen.events] == [
        (1, "block2.0.modules_to_save.default.weight"), (2, "stem.1.modules_to_save.default.weight")]


def test_groups_select_in_target_names_and_take_adapters_along():
    model, plan, frozen = adapted()
    optim = OptimConfig(lr=0.01, weight_decay=0.1, no_decay=["bias", "stem"],
                        groups=[ParamGroupConfig(params=["block1"], lr=0.05), ParamGroupConfig(params=["head.weight"])])
    groups = {g.name: g for g in adapter_groups(model, plan, optim, adapter_no_decay(model, plan, optim), frozen)}
    assert {n: g.lr for n, g in groups.items()} == {"adapters": 0.04, "block1": 0.05, "head.weight": 0.01,
                                                   "unfreeze@1": 0.002, "default": 0.01}
    assert groups["adapters"].names == ["stem.0.lora_A.default.weight", "stem.0.lora_B.default.weight"]
    assert "block1.0.lora_A.default.weight" in groups["block1"].names
    assert groups["head.weight"].names == ["head.modules_to_save.default.weight"]
    assert "head.original_module.weight" in groups["default"].names  # peft's frozen copies
    assert set(groups["adapters"].no_decay) == set(groups["adapters"].names)  # no_decay: [stem] takes its adapter
    names = [n for n, _ in model.named_parameters()]
    assert sorted(n for g in groups.values() for n in g.names) == sorted(names)  # each parameter in one group


def test_layer_decay_gives_each_blocks_adapters_their_decayed_lr():
    model, plan, frozen = adapted(FreezeConfig(trainable=["head"]))
    groups = adapter_groups(model, plan, OptimConfig(lr=0.01, layer_decay=0.5), set(), frozen)
    lrs = {g.name: g.lr for g in groups}
    assert lrs["adapters:stem"] == 0.04 * 0.5 ** 3 and lrs["adapters:block1"] == 0.04 * 0.25
    assert lrs["adapters:block2"] == 0.04 * 0.5 and lrs["head"] == 0.01 and "adapters" not in lrs


def test_part_of_the_head_may_train():
    model, plan, frozen = adapted(FreezeConfig(trainable=["head.weight"]))
    assert plan.head == ["head"] and plan.head_params == 64 * 5
    assert "head.modules_to_save.default.bias" not in frozen.trainable


class WithScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.body(x) * self.scale)


@pytest.mark.parametrize("freeze, targets, message", [
    (FreezeConfig(trainable=["head"], schedule=[UnfreezeEvent(epoch=1, unfreeze=["blok2"])]), None,
     r"freeze\.schedule\[0\]\.unfreeze: selector 'blok2' matches no parameter"),
    (LATER, ["block2"], r"adapters\.targets: 'block2\.0' gets an adapter, and freeze\.schedule\[0\]\.unfreeze trains "
                        r"'block2\.0\.weight' in full.*Drop 'block2\.0' from adapters\.targets, or leave it out of "
                        r"freeze\.schedule\[0\]\.unfreeze \(select the other layers by name, e\.g\. block2\.<layer>\)"),
    (FreezeConfig(trainable=["head"], gradual=GradualConfig(every=1)), ["block1"],
     r"'block1\.0' gets an adapter, and freeze\.gradual trains 'block1\.0\.weight' in full"),
])
def test_wrong_inputs_name_the_key(freeze, targets, message):
    with pytest.raises(UserError, match=message):
        plan_adapters(cnn(), LORA, targets, freeze, ["head"])


def test_a_parameter_of_the_model_itself_cannot_train_in_full():
    freeze = FreezeConfig(trainable=["head"], schedule=[UnfreezeEvent(epoch=1, unfreeze=["scale"])])
    with pytest.raises(UserError, match=r"freeze\.schedule\[0\]\.unfreeze: trains 'scale', a parameter of the model "
                                        r"itself .* not supported yet with adapters"):
        plan_adapters(WithScale(), LORA, ["body"], freeze, ["head"])


def test_a_group_named_like_the_adapters_group_is_refused():
    model, plan, frozen = adapted()
    optim = OptimConfig(groups=[ParamGroupConfig(params=["head"], name="adapters")])
    with pytest.raises(UserError, match=r"optim\.groups\[0\]: its group name 'adapters' is the name of the adapters' "
                                        r"group \(adapters\.lr\); choose another name"):
        adapter_groups(model, plan, optim, set(), frozen)
