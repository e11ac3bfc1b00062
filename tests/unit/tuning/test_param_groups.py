"""Unit tests for transfer_pipeline.tuning.param_groups: selectors -> optimizer groups, each param in one group."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from transfer_pipeline.tuning.batchnorm import apply_bn_policy, bn_param_names
from transfer_pipeline.errors import UserError
from transfer_pipeline.tuning.events import Event, Trigger
from transfer_pipeline.tuning.freezing import (
    initial_trainable,
    model_blocks,
    resolve_schedule,
    set_requires_grad,
    unfreeze,
)
from transfer_pipeline.tuning.param_groups import build_groups, current_lrs, format_groups, make_optimizer, no_decay_names
from transfer_pipeline.schema import (
    BatchNormPolicy,
    FreezeConfig,
    OptimConfig,
    OptimizerName,
    ParamGroupConfig,
    UnfreezeEvent,
)


def ocfg(groups=(), lr=1e-3, weight_decay=0.0, name="adamw", momentum=0.9, layer_decay=None) -> OptimConfig:
    return OptimConfig(name=OptimizerName(name), lr=lr, weight_decay=weight_decay, momentum=momentum,
                       groups=[ParamGroupConfig(**g) for g in groups], layer_decay=layer_decay)


def events_for(names, bn_params, frozen, schedule, epochs=5, bn="auto"):
    fc = FreezeConfig(trainable=None, frozen=list(frozen), bn=BatchNormPolicy(bn),
                      schedule=[UnfreezeEvent(**e) for e in schedule])
    never = bn_params if bn == "frozen" else set()
    trainable = initial_trainable(names, fc, never)
    return trainable, resolve_schedule(names, fc, trainable, epochs, never)


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
    with pytest.raises(UserError, match=r"freeze\.schedule\[0\]\.lr=1e-05 \(epoch 2\): sets the LR of 'block2\.0\.weight', "
                                        r"which optim\.groups\[0\] already puts in group 'backbone'\. Set the LR in one place"):
        build_groups(names, ocfg([{"params": ["block1", "block2"], "name": "backbone", "lr": 1e-4}]), events)


def test_event_group_not_created_when_empty(names):
    ev = Event(trigger=Trigger(epoch=1), selectors=("head",), names=())
    groups = build_groups(names, ocfg(), [ev])
    assert [g.name for g in groups] == ["default"]


def test_group_names_are_unique_with_two_events_at_one_epoch(model, names):
    # two events may share an epoch (different parts at different LRs): their groups need distinct names,
    # which format_groups and metrics.csv (lr/<name>) key on
    bn = bn_param_names(model)
    _, events = events_for(names, bn, frozen=["stem", "block1", "block2"], schedule=[
        {"epoch": 1, "unfreeze": ["block2"], "lr": 1e-4},
        {"epoch": 1, "unfreeze": ["block1"], "lr": 1e-5},
        {"epoch": 2, "unfreeze": ["stem"], "lr": 1e-6},
    ])
    groups = build_groups(names, ocfg(), events)
    assert_partition(groups, names)
    group_names = [g.name for g in groups]
    assert len(group_names) == len(set(group_names)), group_names
    # the epoch alone is kept where it is unique; shared epochs add the event's first selector
    assert group_names == ["unfreeze@1:block2", "unfreeze@1:block1", "unfreeze@2", "default"]
    g = by_name(groups)
    assert (g["unfreeze@1:block2"].lr, g["unfreeze@1:block1"].lr) == (1e-4, 1e-5)
    opt = make_optimizer(model, groups, ocfg())
    rows = {ln.split()[0]: ln.split() for ln in format_groups(model, groups, current_lrs(opt)).splitlines()[2:]}
    assert rows["unfreeze@1:block2"][4] == "0.0001" and rows["unfreeze@1:block1"][4] == "1e-05"


def test_same_first_selector_at_one_epoch_still_unique(model, names):
    bn = bn_param_names(model)
    _, events = events_for(names, bn, frozen=["block2"], schedule=[
        {"epoch": 1, "unfreeze": ["block2.0"], "lr": 1e-4},
        {"epoch": 1, "unfreeze": ["block2.0", "block2.1"], "lr": 1e-5},
    ])
    assert [g.name for g in build_groups(names, ocfg(), events)] == ["unfreeze@1:block2.0", "unfreeze@1:block2.0#2",
                                                                      "default"]


def test_event_name_chooses_the_group_name(model, names):
    bn = bn_param_names(model)
    _, events = events_for(names, bn, frozen=["block2"], schedule=[
        {"epoch": 1, "unfreeze": ["block2"], "lr": 1e-4, "name": "late"}])
    assert [g.name for g in build_groups(names, ocfg(), events)] == ["late", "default"]
    with pytest.raises(UserError, match=r"freeze\.schedule\[0\]\.name='head': another group already has this name"):
        _, events = events_for(names, bn, frozen=["block2"], schedule=[
            {"epoch": 1, "unfreeze": ["block2"], "lr": 1e-4, "name": "head"}])
        build_groups(names, ocfg([{"params": ["head"]}]), events)


@pytest.mark.parametrize("name", ["default", "unfreeze@2", "unfreeze@step5"])
def test_user_group_called_like_a_generated_group_is_error(names, name):
    # 'default' and 'unfreeze@...' are the names of generated groups: a user group may not take them
    with pytest.raises(UserError, match=rf"optim\.groups\[0\]: name='{name}' is reserved for generated groups"):
        build_groups(names, ocfg([{"params": ["head"], "name": name, "lr": 0.5}]), [])


def test_user_group_whose_first_selector_is_reserved_is_error():
    with pytest.raises(UserError, match=r"optim\.groups\[0\]: name defaults to its first selector 'default', "
                                        r"which is reserved.*Choose another name"):
        build_groups(["default.weight", "head.weight"], ocfg([{"params": ["default"], "lr": 0.5}]), [])


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


def table(text: str) -> dict[str, dict[str, str]]:
    """format_groups output -> {group: {column: cell}} (columns are separated by two or more spaces)."""
    lines = text.splitlines()
    header = re.split(r"\s{2,}", lines[0].strip())
    return {cells[0]: dict(zip(header, cells)) for cells in (re.split(r"\s{2,}", ln.strip()) for ln in lines[2:])}


def test_format_groups_shows_state_lr_and_bn(model, names):
    set_requires_grad(model, {"head.weight", "head.bias", "block2.0.weight"})
    cfg = ocfg([{"params": ["head"], "lr": 0.01}, {"params": ["block2"], "lr": 0.002}], weight_decay=0.05)
    groups = build_groups(names, cfg, [], no_decay=no_decay_names(model, cfg))
    opt = make_optimizer(model, groups, cfg)
    for pg in opt.param_groups:  # "lr" is the optimizer's LR now, "peak" the group's own
        if pg["name"] == "head":
            pg["lr"] = 0.005
    modes = {"stem.1": "auto", "block1.1": "frozen", "block2.1": "eval"}
    rows = table(format_groups(model, groups, current_lrs(opt), modes))
    assert list(rows) == ["head", "block2", "default"]
    assert rows["head"] == {"group": "head", "selectors": "head", "tensors": "2", "params": "325", "lr": "0.005",
                            "peak": "0.01", "wd": "0.05 (0 on 1)", "state": "trainable", "bn": "-"}
    assert rows["block2"]["state"] == "partly (1/3 tensors)" and rows["block2"]["lr"] == "0.002"
    assert rows["block2"]["bn"] == "eval" and rows["block2"]["wd"] == "0.05 (0 on 2)"
    assert rows["default"]["state"] == "frozen" and rows["default"]["bn"] == "eval 1, frozen 1"
    assert rows["default"]["params"] == f"{sum(p.numel() for p in [*model.stem.parameters(), *model.block1.parameters()]):,}"


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


# --- lr_mult, per-group optimizer settings ---------------------------------------------------------------

def test_lr_mult_multiplies_optim_lr(names):
    groups = build_groups(names, ocfg([{"params": ["stem"], "lr_mult": 0.1}, {"params": ["head"], "lr": 0.5}],
                                      lr=0.02), [])
    assert {g.name: g.lr for g in groups} == pytest.approx({"stem": 0.002, "head": 0.5, "default": 0.02})


def test_event_lr_mult(model, names):
    _, events = events_for(names, bn_param_names(model), frozen=["block2"],
                           schedule=[{"epoch": 1, "unfreeze": ["block2"], "lr_mult": 0.25}])
    assert {g.name: g.lr for g in build_groups(names, ocfg(lr=0.04), events)} == {"unfreeze@1": 0.01, "default": 0.04}


@pytest.mark.parametrize(("group", "name", "match"), [
    ({"params": ["head"], "lr": 0.1, "lr_mult": 2.0}, "adamw", r"optim\.groups\[0\]: sets both lr=0\.1 and lr_mult=2\.0"),
    ({"params": ["head"], "lr": -1.0}, "adamw", r"optim\.groups\[0\]\.lr=-1\.0: must be a finite number >= 0"),
    ({"params": ["head"], "betas": [0.9, 0.99]}, "sgd", r"optim\.groups\[0\]\.betas: betas are for adam/adamw"),
    ({"params": ["head"], "betas": [0.9]}, "adamw", r"optim\.groups\[0\]\.betas=\[0\.9\]: two numbers in \[0, 1\)"),
    ({"params": ["head"], "momentum": 0.5}, "adamw", r"optim\.groups\[0\]\.momentum: momentum is for sgd"),
    ({"params": ["head"], "eps": 1e-6}, "sgd", r"optim\.groups\[0\]\.eps: eps is for adam/adamw"),
    ({"params": ["head"], "warmup_steps": -1}, "adamw", r"optim\.groups\[0\]\.warmup_steps=-1"),
])
def test_bad_group_settings_are_errors(names, group, name, match):
    with pytest.raises(UserError, match=match):
        build_groups(names, ocfg([group], name=name), [])


def test_per_group_betas_eps_momentum_reach_the_optimizer(model, names):
    cfg = ocfg([{"params": ["head"], "betas": [0.8, 0.9], "eps": 1e-6}])
    cfg.betas = [0.85, 0.95]
    opt = make_optimizer(model, build_groups(names, cfg, []), cfg)
    assert [(pg["name"], pg["betas"], pg["eps"]) for pg in opt.param_groups] == [
        ("head", (0.8, 0.9), 1e-6), ("default", (0.85, 0.95), 1e-8)]
    cfg = ocfg([{"params": ["head"], "momentum": 0.5}], name="sgd", momentum=0.9)
    opt = make_optimizer(model, build_groups(names, cfg, []), cfg)
    assert [pg["momentum"] for pg in opt.param_groups] == [0.5, 0.9]


# --- no_decay --------------------------------------------------------------------------------------------

def test_no_decay_defaults_to_bias_and_norm_for_adamw_only(model):
    bias_and_norm = {"head.bias"} | bn_param_names(model)
    assert no_decay_names(model, ocfg()) == bias_and_norm
    assert no_decay_names(model, ocfg(name="sgd")) == set()
    cfg = ocfg(name="sgd")
    cfg.no_decay = ["bias", "norm", "stem.0"]
    assert no_decay_names(model, cfg) == bias_and_norm | {"stem.0.weight"}


def test_no_decay_selector_matching_nothing_is_error(model):
    cfg = ocfg()
    cfg.no_decay = ["bias", "pos_embed"]
    with pytest.raises(UserError, match=r"optim\.no_decay\[1\]: selector 'pos_embed' matches no parameter"):
        no_decay_names(model, cfg)


def test_norm_covers_layer_norm_group_norm_and_batch_norm():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.GroupNorm(2, 4),
                                torch.nn.BatchNorm1d(4))
    assert no_decay_names(model, ocfg()) == {"0.bias", "1.weight", "1.bias", "2.weight", "2.bias", "3.weight", "3.bias"}


def test_weight_decay_hits_decayed_trainable_params_only(model, names):
    # one AdamW step with zero gradients: Adam's update is 0, so what moves is the decoupled decay alone
    set_requires_grad(model, {"head.weight", "head.bias", "block2.0.weight", "block2.1.weight"})
    cfg = ocfg(lr=0.1, weight_decay=0.5)
    groups = build_groups(names, cfg, [], no_decay=no_decay_names(model, cfg))
    opt = make_optimizer(model, groups, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(model.named_parameters())
    for n in names:
        if n in ("head.weight", "block2.0.weight"):  # trainable weights: decayed by lr * wd
            assert torch.equal(after[n], before[n] * (1 - 0.1 * 0.5)), n
        else:  # frozen (no grad) or bias/norm (no_decay): untouched
            assert torch.equal(after[n], before[n]), n
    assert {n for n, p in model.named_parameters() if p in opt.state} == {"head.weight", "head.bias", "block2.0.weight",
                                                                         "block2.1.weight"}


# --- layer-wise LR decay -----------------------------------------------------------------------------------

def test_layer_decay_gives_each_block_a_decayed_lr(names):
    groups = build_groups(names, ocfg(lr=0.1, layer_decay=0.5), [], blocks=model_blocks(names))
    assert {g.name: g.lr for g in groups} == pytest.approx({"stem": 0.0125, "block1": 0.025, "block2": 0.05,
                                                            "head": 0.1})
    assert [g.origin for g in groups] == ["optim.layer_decay"] * 4
    assert_partition(groups, names)


def test_layer_decay_leaves_optim_groups_and_lr_events_alone(model, names):
    _, events = events_for(names, bn_param_names(model), frozen=["stem", "block1"], schedule=[
        {"epoch": 1, "unfreeze": ["block1"], "lr": 0.003}, {"epoch": 2, "unfreeze": ["stem"]}])
    groups = build_groups(names, ocfg([{"params": ["head.bias"], "name": "hb", "lr": 1.0}], lr=0.1, layer_decay=0.5),
                          events, blocks=model_blocks(names))
    g = by_name(groups)
    assert list(g) == ["hb", "unfreeze@1", "stem", "block2", "head"]  # stem's event sets no LR: its block's LR
    assert (g["unfreeze@1"].lr, g["stem"].lr, g["head"].names) == (0.003, 0.0125, ["head.weight"])
    assert_partition(groups, names)


def test_params_outside_custom_blocks_stay_in_default(names):
    blocks = model_blocks(names, ["block2", "head"])
    groups = build_groups(names, ocfg(lr=0.1, layer_decay=0.5), [], blocks=blocks)
    assert {g.name: (g.lr, len(g.names)) for g in groups} == {"block2": (0.05, 3), "head": (0.1, 2), "default": (0.1, 6)}


@pytest.mark.parametrize("decay", [0.0, 1.5, -0.5])
def test_layer_decay_out_of_range_is_error(names, decay):
    with pytest.raises(UserError, match=rf"optim\.layer_decay={decay}: must be in \(0, 1\]"):
        build_groups(names, ocfg(layer_decay=decay), [], blocks=model_blocks(names))


def test_user_group_named_like_a_block_is_error_under_layer_decay(names):
    with pytest.raises(UserError, match=r"optim\.groups\[0\]: its group name 'block2' is also the name optim\.layer_decay "
                                        r"gives block 'block2'"):
        build_groups(names, ocfg([{"params": ["block2.0"], "name": "block2"}], layer_decay=0.5), [],
                     blocks=model_blocks(names))


def test_second_event_setting_lr_of_a_param_already_grouped_is_error(model, names):
    _, events = events_for(names, bn_param_names(model), frozen=["block2"], schedule=[
        {"epoch": 1, "unfreeze": ["block2"], "lr": 1e-3}, {"epoch": 2, "freeze": ["block2"]},
        {"epoch": 3, "unfreeze": ["block2"], "lr": 1e-4}])
    with pytest.raises(UserError, match=r"freeze\.schedule\[2\]\.lr=0\.0001 \(epoch 3\): sets the LR of 'block2\.0\.weight', "
                                        r"which freeze\.schedule\[0\] already puts in its own group"):
        build_groups(names, ocfg(), events)
