"""The freeze/unfreeze schedule in training: what is frozen stays bitwise frozen, what unfreezes trains from
its event on, weight decay and optimizer state never touch frozen parameters, and every group's LR at every
step is the closed form of its schedule. Real configs (composed), the real loop (training.loop.train), random data."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import pytest
import torch

from transfer_pipeline.tuning.freezing import plan_freezing, set_requires_grad
from transfer_pipeline.tuning.lr_schedule import build_schedule
from transfer_pipeline.models import DigitsCNN
from transfer_pipeline.model_parts import expand_freeze, model_parts
from transfer_pipeline.tuning.param_groups import build_groups, make_optimizer, no_decay_names
from transfer_pipeline.training.engine import Engine
from transfer_pipeline.training.loop import TrainContext, train

STEM = ("stem.0.weight", "stem.1.weight", "stem.1.bias", "stem.1.running_mean", "stem.1.running_var",
        "stem.1.num_batches_tracked")


def keys(block: str) -> tuple[str, ...]:
    return tuple(k.replace("stem.", f"{block}.") for k in STEM)


def clone(sd) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in sd.items()}


@dataclass
class Trained:
    model: DigitsCNN
    optimizer: torch.optim.Optimizer
    groups: list
    before: dict  # state dict before training
    epochs: list  # state dict after each epoch
    steps: list  # state dict after each step (when asked for)
    lrs: list  # {group: lr} used by each step
    history: list  # metrics rows

    def params_with_state(self) -> set[str]:
        return {n for n, p in self.model.named_parameters() if p in self.optimizer.state}


def run_training(compose, *overrides: str, epochs: int = 4, spe: int = 3, every_step: bool = False) -> Trained:
    cfg = compose("freeze=none", f"trainer.epochs={epochs}", *overrides)
    torch.manual_seed(0)
    model = DigitsCNN(num_classes=5)
    cfg.freeze = expand_freeze(cfg.freeze, model_parts(model))  # "@head" in conf/freeze/*.yaml, as the recipe does
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 5, (16,), generator=g)) for _ in range(spe)]
    plan = plan_freezing(model, cfg.freeze, epochs)
    set_requires_grad(model, plan.trainable)
    groups = build_groups(plan.names, cfg.optim, plan.events, plan.blocks, no_decay_names(model, cfg.optim))
    optimizer = make_optimizer(model, groups, cfg.optim)
    schedule = build_schedule(groups, plan.trainable, plan.events, cfg.optim.scheduler, epochs, spe)
    out = Trained(model, optimizer, groups, clone(model.state_dict()), [], [], [], [])

    def on_step(step, opt):
        out.lrs.append({pg["name"]: pg["lr"] for pg in opt.param_groups})
        if every_step:
            out.steps.append(clone(model.state_dict()))

    state = train(TrainContext(model, optimizer, batches, batches[:1], Engine(torch.device("cpu")), epochs,
                               events=plan.events, bn_policy=plan.bn_modes, schedule=schedule, on_step=on_step,
                               on_epoch=lambda row: out.epochs.append(clone(model.state_dict()))))
    out.history = state.history
    return out


def same(a, b, names) -> list[str]:
    return [n for n in names if torch.equal(a[n], b[n])]


# --- frozen stays frozen, bitwise; unfrozen trains from its epoch ------------------------------------

def test_frozen_params_and_bn_stats_bitwise_until_their_unfreeze_epoch(compose):
    t = run_training(compose, "freeze.trainable=[head]", "freeze.bn=eval", "optim.weight_decay=0.1",
                     "freeze.schedule=[{epoch: 2, unfreeze: [block2], lr: 0.001}]")
    frozen_all_run = STEM + keys("block1")
    for e, sd in enumerate(t.epochs):
        assert same(t.before, sd, frozen_all_run) == list(frozen_all_run), f"epoch {e}"
    block2 = keys("block2")
    assert same(t.before, t.epochs[0], block2) == list(block2) and same(t.before, t.epochs[1], block2) == list(block2)
    assert same(t.before, t.epochs[2], block2) == []  # weights, BN affine and BN statistics all move from epoch 2
    assert not torch.equal(t.before["head.weight"], t.epochs[0]["head.weight"])
    # AdamW state only for what trained; the optimizer held block2 all along (no rebuild)
    assert t.params_with_state() == {n for n, _ in t.model.named_parameters() if n.startswith(("head.", "block2."))}
    assert [int(r["trainable_params"]) for r in t.history] == [325, 325, 18885, 18885]
    head_state = t.optimizer.state[t.model.head.weight]
    assert int(head_state["step"]) == 12  # 4 epochs x 3 steps: its state survived the event


@pytest.mark.parametrize("optim", ["adamw", "sgd"])
def test_refrozen_params_stop_dead_despite_momentum_and_weight_decay(compose, optim):
    # momentum (SGD) and Adam's moments would keep moving a parameter whose gradient were zero; a
    # re-frozen parameter's grad is None, so the optimizer skips it: no update, no decay
    t = run_training(compose, f"optim={optim}", "optim.weight_decay=0.5", "optim.no_decay=[]", "optim.lr=0.01",
                     "freeze.frozen=[stem]", "freeze.bn=eval", "freeze.schedule=[{epoch: 1, freeze: [block2]}]")
    block2 = [n for n in keys("block2") if "running" not in n and "num_batches" not in n]
    assert same(t.before, t.epochs[0], block2) == []  # trained in epoch 0
    for e in (1, 2, 3):
        assert same(t.epochs[0], t.epochs[e], block2) == block2, f"epoch {e}"
    assert same(t.before, t.epochs[3], STEM) == list(STEM)  # frozen from the start, decay 0.5 never applied
    assert all(p.grad is None for n, p in t.model.named_parameters() if n.startswith(("stem.", "block2.")))
    with_state = t.params_with_state()
    assert not any(n.startswith("stem.") for n in with_state)  # never trained: no optimizer state
    if optim == "adamw":
        assert {n for n in with_state if n.startswith("block2.")} == set(block2)  # trained once: state kept
        assert int(t.optimizer.state[t.model.block2[0].weight]["step"]) == 3  # and no step since its freeze


# --- BatchNorm modes ----------------------------------------------------------------------------------

def test_bn_override_modes_eval_frozen_train(compose):
    t = run_training(compose, "freeze.bn=eval", "freeze.bn_overrides=[{params: [stem], mode: eval}, "
                     "{params: ['block1.1'], mode: frozen}, {params: ['block2.*'], mode: train}]", epochs=2)
    end = t.epochs[-1]
    # eval: statistics fixed, affine still trains
    assert same(t.before, end, STEM) == ["stem.1.running_mean", "stem.1.running_var", "stem.1.num_batches_tracked"]
    # frozen: statistics and affine fixed (the conv before it still trains)
    assert same(t.before, end, keys("block1")) == list(keys("block1")[1:])
    # train: statistics updated
    assert same(t.before, end, keys("block2")) == []


def test_bn_train_override_updates_stats_of_a_frozen_block(compose):
    t = run_training(compose, "freeze.trainable=[head]", "freeze.bn=eval",
                     "freeze.bn_overrides=[{params: [block2], mode: train}]", epochs=1)
    assert same(t.before, t.epochs[0], keys("block2")) == ["block2.0.weight", "block2.1.weight", "block2.1.bias"]
    assert same(t.before, t.epochs[0], keys("block1")) == list(keys("block1"))  # default eval: all frozen


def test_bn_frozen_globally_never_trains_bn_even_when_unfrozen(compose):
    t = run_training(compose, "freeze.trainable=[head]", "freeze.bn=frozen", epochs=2,
                     *["freeze.schedule=[{epoch: 1, unfreeze: [block2]}]"])
    assert same(t.before, t.epochs[-1], keys("block2")) == list(keys("block2")[1:])  # only the conv trained


# --- LRs step by step ---------------------------------------------------------------------------------

def test_every_group_lr_at_every_step_is_its_closed_form(compose):
    spe, epochs = 3, 4
    total = spe * epochs
    t = run_training(compose, "freeze.trainable=[head]", "optim.scheduler.name=cosine", "optim.scheduler.warmup_steps=2",
                     "optim.scheduler.min_lr_mult=0.1", "optim.lr=0.01",
                     "freeze.schedule=[{epoch: 1, unfreeze: [block2], lr: 0.002, warmup_steps: 4}, "
                     "{epoch: 2, unfreeze: [block1]}]", epochs=epochs, spe=spe)

    def cos(s):
        return 0.1 + 0.9 * (1 + math.cos(math.pi * s / total)) / 2

    def warm(s, start, w):
        return min(1.0, max(0.0, (s - start + 1) / w))

    assert len(t.lrs) == total
    for s, lrs in enumerate(t.lrs):
        want = {"default": 0.01 * cos(s) * warm(s, 0, 2),  # head trains from step 0 (scheduler warmup)
                "unfreeze@1": 0.002 * cos(s) * warm(s, 3, 4),  # its own warmup from its unfreeze (step 3)
                "unfreeze@2": 0.01 * cos(s) * warm(s, 6, 2)}  # scheduler warmup from step 6
        assert lrs == pytest.approx(want, rel=1e-12, abs=0), s
    for e, row in enumerate(t.history):  # metrics.csv: the LR of the epoch's last step
        assert {k[3:]: v for k, v in row.items() if k.startswith("lr/")} == t.lrs[(e + 1) * spe - 1]


def test_layer_decay_and_lr_mult_groups_follow_one_onecycle(compose):
    spe, epochs = 4, 3
    t = run_training(compose, "optim.layer_decay=0.5", "optim.lr=0.02", "optim.scheduler.name=onecycle",
                     "optim.groups=[{name: stem, params: [stem], lr_mult: 0.01}]", epochs=epochs, spe=spe)
    assert [g.name for g in t.groups] == ["stem", "block1", "block2", "head"]
    total, up = spe * epochs, 0.3 * spe * epochs - 1
    for s, lrs in enumerate(t.lrs):
        if s <= up:
            f = 1 / 25 + (1 - 1 / 25) * (1 - math.cos(math.pi * s / up)) / 2
        else:
            f = 1 / 25e4 + (1 - 1 / 25e4) * (1 + math.cos(math.pi * (s - up) / (total - 1 - up))) / 2
        want = {"stem": 0.0002 * f, "block1": 0.005 * f, "block2": 0.01 * f, "head": 0.02 * f}
        assert lrs == pytest.approx(want, rel=1e-9), s


def test_step_event_unfreezes_mid_epoch(compose):
    t = run_training(compose, "freeze.trainable=[head]",
                     "freeze.schedule=[{step: 4, unfreeze: [block2], warmup_steps: 2}]", epochs=3, spe=3,
                     every_step=True)
    w = "block2.0.weight"
    assert [torch.equal(t.before[w], sd[w]) for sd in t.steps] == [True] * 4 + [False] * 5
    assert [lrs["unfreeze@step4"] for lrs in t.lrs] == pytest.approx([0, 0, 0, 0, 0.005, 0.01, 0.01, 0.01, 0.01])
    assert [int(r["trainable_params"]) for r in t.history] == [325, 18885, 18885]


def test_gradual_unfreezing_one_block_per_epoch_from_the_head(compose):
    t = run_training(compose, "freeze=gradual", epochs=4, spe=2)
    assert [int(r["trainable_params"]) for r in t.history] == [325, 325 + 18560, 325 + 18560 + 4672, 23733]
    for block, epoch in (("block2", 1), ("block1", 2), ("stem", 3)):
        ks = keys(block)
        for e in range(4):
            assert bool(same(t.before, t.epochs[e], ks)) == (e < epoch), (block, e)
    assert [g.name for g in t.groups] == ["unfreeze@1", "unfreeze@2", "unfreeze@3", "default"]


def test_gradual_warns_when_the_run_ends_before_every_block_is_unfrozen(compose, caplog):
    with caplog.at_level(logging.WARNING, logger="transfer_pipeline.tuning.freezing"):
        t = run_training(compose, "freeze=gradual", "freeze.gradual.every=2", epochs=5, spe=1)
    assert [int(r["trainable_params"]) for r in t.history] == [325, 325, 18885, 18885, 23557]
    (msg,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "freeze.gradual: 1 block(s) stay frozen (stem)" in msg and "trainer.epochs=7" in msg
