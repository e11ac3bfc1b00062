"""Unit tests for transfer_pipeline.param_groups: selectors -> optimizer groups, each param in one group."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from transfer_pipeline.errors import UserError
from transfer_pipeline.freezing import (
    ResolvedEvent,
    apply_bn_policy,
    bn_param_names,
    initial_trainable,
    resolve_schedule,
    set_requires_grad,
    unfreeze,
)
from transfer_pipeline.models import DigitsCNN
from transfer_pipeline.param_groups import build_groups, format_groups, make_optimizer
from transfer_pipeline.schema import (
    BatchNormPolicy,
    FreezeConfig,
    OptimConfig,
    OptimizerName,
    ParamGroupConfig,
    UnfreezeEvent,
)


@pytest.fixture
def model() -> DigitsCNN:
    torch.manual_seed(0)
    return DigitsCNN(num_classes=5)


@pytest.fixture
def names(model) -> list[str]:
    return [n for n, _ in model.named_parameters()]


def ocfg(groups=(), lr=1e-3, weight_decay=0.0, name="adamw", momentum=0.9) -> OptimConfig:
    return OptimConfig(name=OptimizerName(name), lr=lr, weight_decay=weight_decay, momentum=momentum,
                       groups=[ParamGroupConfig(**g) for g in groups])


def events_for(names, bn_params, frozen, schedule, epochs=5, bn="eval"):
    fc = FreezeConfig(trainable=None, frozen=list(frozen), bn=BatchNormPolicy(bn),
                      schedule=[UnfreezeEvent(**e) for e in schedule])
    trainable = initial_trainable(names, fc, bn_params)
    return trainable, resolve_schedule(names, fc, trainable, epochs, bn_params)


def assert_partition(groups, names):
    every = [n for g in groups for n in g.names]
    assert Counter(every) == Counter(names), "each parameter must be in exactly one group"


def by_name(groups):
    return {g.name: g for g in groups}


# --- build_groups ------------------------------------------------------------------------------------

def test_default_group_only(names):
    (g,) = build_groups(names, ocfg(lr=0.02, weight_decay=0.05), [])
    assert g.name == "default"
    assert g.names == names
    assert (g.lr, g.weight_decay) == (0.02, 0.05)


def test_groups_with_own_lr_and_wd_and_default_rest(names):
    groups = build_groups(names, ocfg([{"params": ["head"], "lr": 0.01},
                                       {"params": ["block2"], "weight_decay": 0.1, "name": "late"}],
                                      lr=1e-3, weight_decay=0.02), [])
    assert [g.name for g in groups] == ["head", "late", "default"]
    g = by_name(groups)
    assert g["head"].names == ["head.weight", "head.bias"]
    assert (g["head"].lr, g["head"].weight_decay) == (0.01, 0.02)  # wd inherited
    assert g["late"].names == ["block2.0.weight", "block2.1.weight", "block2.1.bias"]
    assert (g["late"].lr, g["late"].weight_decay) == (1e-3, 0.1)  # lr inherited
    assert g["default"].names == [n for n in names if n.split(".")[0] in ("stem", "block1")]
    assert (g["default"].lr, g["default"].weight_decay) == (1e-3, 0.02)
    assert_partition(groups, names)


def test_no_default_group_when_groups_cover_everything(names):
    groups = build_groups(names, ocfg([{"params": ["stem", "block1", "block2"]}, {"params": ["head"], "lr": 1.0}]), [])
    assert [g.name for g in groups] == ["stem", "head"]
    assert_partition(groups, names)


def test_group_name_defaults_to_first_selector(names):
    (g, _) = build_groups(names, ocfg([{"params": ["*.bias", "head.weight"]}]), [])
    assert g.name == "*.bias"
    assert g.selectors == ("*.bias", "head.weight")
    assert g.names == ["stem.1.bias", "block1.1.bias", "block2.1.bias", "head.weight", "head.bias"]


def test_overlapping_groups_is_error(names):
    with pytest.raises(UserError, match=r"optim\.groups\[1\]\.params: 'block2\.1\.weight' is already in group "
                                        r"'block2'.*exactly one group"):
        build_groups(names, ocfg([{"params": ["block2"]}, {"params": ["block2.1"]}]), [])


def test_overlap_within_one_group_is_fine(names):
    (g, _) = build_groups(names, ocfg([{"params": ["head", "head.weight", "re:head\\..*"]}]), [])
    assert g.names == ["head.weight", "head.bias"]


def test_group_selector_matching_nothing_is_error(names):
    with pytest.raises(UserError, match=r"optim\.groups\[0\]\.params: selector 'haed' matches no parameter.*head"):
        build_groups(names, ocfg([{"params": ["haed"], "lr": 0.1}]), [])


def test_group_selector_bad_regex_is_error(names):
    with pytest.raises(UserError, match=r"optim\.groups\[0\]\.params: selector 're:head\[' is not a valid regex"):
        build_groups(names, ocfg([{"params": ["re:head["]}]), [])


def test_duplicate_group_names_is_error(names):
    with pytest.raises(UserError, match=r"optim\.groups\[1\]\.name: two groups are called 'x'"):
        build_groups(names, ocfg([{"params": ["head"], "name": "x"}, {"params": ["stem"], "name": "x"}]), [])


def test_event_groups_get_event_lr(model, names):
    bn = bn_param_names(model)
    _, events = events_for(names, bn, frozen=["stem", "block1", "block2"], schedule=[
        {"epoch": 1, "unfreeze": ["block2"], "lr": 1e-4},
        {"epoch": 3, "unfreeze": ["block1"]},
    ])
    groups = build_groups(names, ocfg(lr=1e-3, weight_decay=0.01), events)
    assert [g.name for g in groups] == ["unfreeze@1", "unfreeze@3", "default"]
    g = by_name(groups)
    assert g["unfreeze@1"].names == ["block2.0.weight", "block2.1.weight", "block2.1.bias"]
    assert (g["unfreeze@1"].lr, g["unfreeze@1"].weight_decay) == (1e-4, 0.01)
    assert g["unfreeze@3"].lr == 1e-3  # no event lr: optim.lr
    assert g["unfreeze@3"].names == ["block1.0.weight", "block1.1.weight", "block1.1.bias"]
    # stem is never unfrozen: it stays frozen in the default group
    assert g["default"].names == ["stem.0.weight", "stem.1.weight", "stem.1.bias", "head.weight", "head.bias"]
    assert_partition(groups, names)


def test_event_without_lr_leaves_params_in_their_optim_group(model, names):
    bn = bn_param_names(model)
    _, events = events_for(names, bn, frozen=["block1", "block2"],
                           schedule=[{"epoch": 1, "unfreeze": ["block1", "block2"]}])
    groups = build_groups(names, ocfg([{"params": ["block2"], "lr": 5e-4}]), events)
    g = by_name(groups)
    assert g["block2"].names == ["block2.0.weight", "block2.1.weight", "block2.1.bias"]
    assert g["block2"].lr == 5e-4
    assert g["unfreeze@1"].names == ["block1.0.weight", "block1.1.weight", "block1.1.bias"]
    assert_partition(groups, names)


def test_event_lr_and_group_lr_for_same_param_is_error(model, names):
    bn = bn_param_names(model)
    _, events = events_for(names, bn, frozen=["block2"], schedule=[{"epoch": 2, "unfreeze": ["block2"], "lr": 1e-5}])
    with pytest.raises(UserError, match=r"freeze\.schedule \(epoch 2\): sets lr=1e-05 for 'block2\.0\.weight', which "
                                        r"optim\.groups already puts in 'backbone'\. Set the LR in one place"):
        build_groups(names, ocfg([{"params": ["block1", "block2"], "name": "backbone", "lr": 1e-4}]), events)


def test_event_group_not_created_when_empty(names):
    ev = ResolvedEvent(epoch=1, selectors=("head",), names=(), lr=None)
    groups = build_groups(names, ocfg(), [ev])
    assert [g.name for g in groups] == ["default"]


@pytest.mark.xfail(reason="BUG: build_groups names every event group 'unfreeze@<epoch>', so two schedule events at "
                          "one epoch give two groups with the same name; format_groups (lr looked up by name) then "
                          "shows the wrong LR for one of them and metrics.csv's lr/<name> column keeps only one",
                   strict=True)
def test_group_names_are_unique_with_two_events_at_one_epoch(model, names):
    # two events may share an epoch (different parts at different LRs): their groups need distinct names,
    # which format_groups and metrics.csv (lr/<name>) key on
    bn = bn_param_names(model)
    _, events = events_for(names, bn, frozen=["block1", "block2"], schedule=[
        {"epoch": 1, "unfreeze": ["block2"], "lr": 1e-4},
        {"epoch": 1, "unfreeze": ["block1"], "lr": 1e-5},
    ])
    groups = build_groups(names, ocfg(), events)
    assert_partition(groups, names)
    group_names = [g.name for g in groups]
    assert len(group_names) == len(set(group_names)), group_names


@pytest.mark.xfail(reason="BUG: the duplicate-name check covers optim.groups only; a user group named 'default' "
                          "(or 'unfreeze@N') collides with the generated default/event group of the same name",
                   strict=True)
def test_user_group_called_default_collides_with_generated_default(names):
    groups = build_groups(names, ocfg([{"params": ["head"], "name": "default", "lr": 0.5}]), [])
    group_names = [g.name for g in groups]
    assert len(group_names) == len(set(group_names)), group_names


# --- make_optimizer ----------------------------------------------------------------------------------

def test_make_optimizer_param_group_lrs(model, names):
    cfg = ocfg([{"params": ["head"], "lr": 0.01, "weight_decay": 0.0}], lr=1e-3, weight_decay=0.05)
    groups = build_groups(names, cfg, [])
    opt = make_optimizer(model, groups, cfg)
    assert isinstance(opt, torch.optim.AdamW)
    assert [pg["name"] for pg in opt.param_groups] == ["head", "default"]
    assert [pg["lr"] for pg in opt.param_groups] == [0.01, 1e-3]
    assert [pg["weight_decay"] for pg in opt.param_groups] == [0.0, 0.05]
    params = dict(model.named_parameters())
    assert opt.param_groups[0]["params"][0] is params["head.weight"]
    registered = [id(p) for pg in opt.param_groups for p in pg["params"]]
    assert sorted(registered) == sorted(id(p) for p in model.parameters())  # all params, each once


def test_make_optimizer_registers_frozen_params_up_front(model, names):
    set_requires_grad(model, {"head.weight", "head.bias"})
    cfg = ocfg()
    opt = make_optimizer(model, build_groups(names, cfg, []), cfg)
    assert sum(len(pg["params"]) for pg in opt.param_groups) == len(names)


@pytest.mark.parametrize(("name", "cls"), [("adam", torch.optim.Adam), ("sgd", torch.optim.SGD),
                                           ("adamw", torch.optim.AdamW)])
def test_make_optimizer_kinds(model, names, name, cls):
    cfg = ocfg(name=name, lr=0.05, momentum=0.5)
    opt = make_optimizer(model, build_groups(names, cfg, []), cfg)
    assert type(opt) is cls
    assert opt.param_groups[0]["lr"] == 0.05
    if name == "sgd":
        assert opt.param_groups[0]["momentum"] == 0.5


def test_format_groups_shows_state_and_lr(model, names):
    set_requires_grad(model, {"head.weight", "head.bias", "block2.0.weight"})
    cfg = ocfg([{"params": ["head"], "lr": 0.01}, {"params": ["block2"], "lr": 0.002}])
    groups = build_groups(names, cfg, [])
    text = format_groups(model, groups, make_optimizer(model, groups, cfg))
    rows = {ln.split()[0]: ln for ln in text.splitlines()[2:]}
    assert rows["head"].rstrip().endswith("trainable") and "0.01" in rows["head"]
    assert "partly (1/3 tensors)" in rows["block2"] and "0.002" in rows["block2"]
    assert rows["default"].rstrip().endswith("frozen")


# --- training: frozen stays frozen ------------------------------------------------------------------

def _train_steps(model, opt, steps=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 1, 8, 8, generator=g)
        y = torch.randint(0, 5, (16,), generator=g)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("opt_name", ["adamw", "sgd"])
def test_training_leaves_frozen_params_bitwise_identical(model, names, opt_name):
    bn = bn_param_names(model)
    trainable, events = events_for(names, bn, frozen=["stem", "block1"], schedule=[])
    set_requires_grad(model, trainable)
    cfg = ocfg([{"params": ["head"], "lr": 0.05}], name=opt_name, lr=0.01, weight_decay=0.1)
    opt = make_optimizer(model, build_groups(names, cfg, events), cfg)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.train()
    apply_bn_policy(model, "eval")
    _train_steps(model, opt)
    after = model.state_dict()

    frozen = [n for n in names if n not in trainable]
    assert frozen and set(frozen) == {n for n in names if n.split(".")[0] in ("stem", "block1")}
    for n in frozen:
        assert torch.equal(before[n], after[n]), f"frozen {n} changed"
    for n in trainable:
        assert not torch.equal(before[n], after[n]), f"trainable {n} did not change"
    # BN statistics of the frozen blocks are kept too (freeze.bn=eval)
    for k in ("stem.1.running_mean", "stem.1.running_var", "block1.1.running_mean", "block1.1.running_var"):
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["block2.1.running_mean"], after["block2.1.running_mean"])


def test_unfreeze_event_trains_params_with_optimizer_built_up_front(model, names):
    bn = bn_param_names(model)
    trainable, events = events_for(names, bn, frozen=["block2"], schedule=[{"epoch": 1, "unfreeze": ["block2"],
                                                                            "lr": 1e-3}], epochs=2)
    set_requires_grad(model, trainable)
    cfg = ocfg(lr=0.01, weight_decay=0.1)
    groups = build_groups(names, cfg, events)
    opt = make_optimizer(model, groups, cfg)
    block2 = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("block2")}
    model.train()
    apply_bn_policy(model, "eval")
    assert not model.block2[1].training
    _train_steps(model, opt, steps=3)
    for n, p in model.named_parameters():
        if n in block2:
            assert torch.equal(p, block2[n]), f"{n} changed before its unfreeze event"

    (ev,) = events
    unfreeze(model, ev.names)
    model.train()
    apply_bn_policy(model, "eval")
    assert model.block2[1].training  # its BN now has trainable params again
    _train_steps(model, opt, steps=3, seed=1)
    for n, p in model.named_parameters():
        if n in block2:
            assert not torch.equal(p, block2[n]), f"{n} did not train after its unfreeze event"
    assert {pg["name"]: pg["lr"] for pg in opt.param_groups}["unfreeze@1"] == 1e-3
