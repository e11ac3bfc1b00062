"""transfer_pipeline.tuning.lr_schedule: every group's LR at every step, against closed forms and torch's schedulers."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transfer_pipeline.errors import UserError
from transfer_pipeline.tuning.events import Event, Trigger
from transfer_pipeline.tuning.lr_schedule import (
    build_schedule,
    initial_lrs,
    lr_at,
    schedule_factor,
    warmup_factor,
)
from transfer_pipeline.tuning.param_groups import GroupSpec
from transfer_pipeline.schema import SchedulerConfig, SchedulerName


def sched(name="constant", **kw) -> SchedulerConfig:
    return SchedulerConfig(name=SchedulerName(name), **kw)


def torch_lrs(make, steps: int, peak: float = 0.1) -> list[float]:
    """The LR torch's scheduler gives at steps 0..steps-1 (read before each optimizer step)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    scheduler = make(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return out


# --- the run-wide schedules --------------------------------------------------------------------------

@pytest.mark.parametrize("m", [0.0, 0.1])
def test_cosine_matches_closed_form_and_torch(m):
    total, peak = 37, 0.1
    ours = [lr_at(s, peak=peak, total_steps=total, scheduler=sched("cosine", min_lr_mult=m)) for s in range(total)]
    closed = [peak * m + (peak - peak * m) * (1 + math.cos(math.pi * s / total)) / 2 for s in range(total)]
    assert ours == pytest.approx(closed, rel=1e-12, abs=0)
    ref = torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total, eta_min=peak * m), total)
    assert ours == pytest.approx(ref, rel=1e-9, abs=1e-15)
    assert ours[0] == peak


def test_linear_matches_torch_linear_lr():
    total, peak = 20, 0.05
    ours = [lr_at(s, peak=peak, total_steps=total, scheduler=sched("linear", min_lr_mult=0.2)) for s in range(total)]
    assert ours == pytest.approx([peak * (1 - 0.8 * s / total) for s in range(total)], rel=1e-12)
    ref = torch_lrs(lambda o: torch.optim.lr_scheduler.LinearLR(o, 1.0, 0.2, total_iters=total), total, peak)
    assert ours == pytest.approx(ref, rel=1e-9)


def test_step_decays_every_step_epochs_epochs_like_torch_step_lr():
    spe, total, peak = 4, 24, 0.1
    cfg = sched("step", step_epochs=2, gamma=0.5)
    ours = [lr_at(s, peak=peak, total_steps=total, scheduler=cfg, steps_per_epoch=spe) for s in range(total)]
    assert ours == [peak * 0.5 ** (s // 8) for s in range(total)]
    ref = torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=8, gamma=0.5), total)
    assert ours == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize(("total", "pct"), [(50, 0.3), (17, 0.25), (100, 0.1)])
def test_onecycle_matches_torch_one_cycle_lr(total, pct):
    peak = 0.2
    cfg = sched("onecycle", pct_start=pct, div_factor=10.0, final_div_factor=100.0)
    ours = [lr_at(s, peak=peak, total_steps=total, scheduler=cfg) for s in range(total)]
    ref = torch_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=peak, total_steps=total, pct_start=pct, div_factor=10.0, final_div_factor=100.0,
        anneal_strategy="cos", cycle_momentum=False), total, peak)
    assert ours == pytest.approx(ref, rel=1e-9)
    assert ours[0] == pytest.approx(peak / 10) and max(ours) <= peak
    assert ours[-1] == pytest.approx(peak / 1000)


def test_constant_is_the_peak():
    assert {lr_at(s, peak=0.3, total_steps=10) for s in range(10)} == {0.3}


def test_warmup_is_linear_from_the_start_like_torch_linear_lr():
    w = 5
    assert [warmup_factor(k, w) for k in range(-2, 8)] == [0, 0, 0.2, 0.4, 0.6, 0.8, 1, 1, 1, 1]
    assert [warmup_factor(k, 0) for k in (-3, 0, 9)] == [1, 1, 1]  # no warmup: the full LR, even before the start
    ref = torch_lrs(lambda o: torch.optim.lr_scheduler.LinearLR(o, 1 / w, 1.0, total_iters=w - 1), 8, 1.0)
    assert [warmup_factor(k, w) for k in range(8)] == pytest.approx(ref, rel=1e-12)


def test_lr_is_peak_times_schedule_times_warmup_from_the_group_start():
    cfg = sched("cosine")
    for step in range(40):
        got = lr_at(step, peak=0.01, total_steps=40, start=12, warmup_steps=4, scheduler=cfg)
        want = 0.01 * (1 + math.cos(math.pi * step / 40)) / 2 * min(1.0, max(0.0, (step - 12 + 1) / 4))
        assert got == pytest.approx(want, rel=1e-12, abs=0), step


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(["constant", "cosine", "linear", "step", "onecycle"]), total=st.integers(2, 300),
       warmup=st.integers(0, 50), start=st.integers(0, 299), peak=st.floats(1e-6, 10))
def test_lr_never_exceeds_the_peak_nor_goes_negative(name, total, warmup, start, peak):
    cfg = sched(name, gamma=0.5)
    lrs = [lr_at(s, peak=peak, total_steps=total, start=start, warmup_steps=warmup, scheduler=cfg, steps_per_epoch=3)
           for s in range(total)]
    assert all(0 <= lr <= peak * (1 + 1e-12) for lr in lrs)
    if warmup:
        assert all(lr == 0 for lr in lrs[:start])  # a group with warmup shows 0 before it starts


def test_schedule_factor_at_step_zero_does_not_depend_on_the_run_length():
    for name in ("constant", "cosine", "linear", "step", "onecycle"):
        cfg = sched(name)
        assert len({schedule_factor(0, total, cfg, spe) for total in (4, 40, 4000) for spe in (1, 7)}) == 1, name


# --- groups over a run: starts from the freeze timeline ---------------------------------------------------

def group(name, names, lr, warmup=None) -> GroupSpec:
    return GroupSpec(name, (name,), list(names), lr=lr, warmup_steps=warmup)


def event(epoch=None, names=(), step=None, frozen=(), warmup=None, where="freeze.schedule[0]") -> Event:
    return Event(trigger=Trigger(epoch=epoch, step=step), selectors=("x",), names=tuple(names), frozen=tuple(frozen),
                 warmup_steps=warmup, where=where)


def test_group_unfrozen_later_warms_up_from_its_unfreeze_on_the_run_wide_cosine():
    spe, epochs = 5, 4
    total = spe * epochs
    groups = [group("late", ["b"], 0.001), group("default", ["a", "c"], 0.01)]
    s = build_schedule(groups, {"a"}, [event(2, ["b"], warmup=3)], sched("cosine", warmup_steps=2), epochs, spe)
    cos = [(1 + math.cos(math.pi * t / total)) / 2 for t in range(total)]
    for t in range(total):
        # `late` starts at step 10 with its event's warmup (3 steps); it shows 0 before
        want_late = 0.001 * cos[t] * min(1.0, max(0.0, (t - 10 + 1) / 3))
        # `default` trains from step 0 with the scheduler's warmup (2 steps)
        want_default = 0.01 * cos[t] * min(1.0, (t + 1) / 2)
        assert s.lr("late", t) == pytest.approx(want_late, rel=1e-12, abs=0), t
        assert s.lr("default", t) == pytest.approx(want_default, rel=1e-12, abs=0), t
    assert s.lrs(10)["late"] == pytest.approx(0.001 * cos[10] / 3)


def test_group_without_warmup_shows_its_lr_before_it_starts():
    s = build_schedule([group("late", ["b"], 0.002), group("default", ["a"], 0.01)], {"a"}, [event(3, ["b"])],
                       sched(), 6, 10)
    assert [s.lr("late", t) for t in (0, 29, 30, 59)] == [0.002] * 4


def test_refreeze_and_unfreeze_again_restarts_the_warmup():
    groups = [group("g", ["b"], 1.0, warmup=4), group("default", ["a"], 1.0)]
    events = [event(1, ["b"], where="freeze.schedule[0]"), event(2, frozen=["b"], where="freeze.schedule[1]"),
              event(3, ["b"], where="freeze.schedule[2]")]
    s = build_schedule(groups, {"a"}, events, sched(), 5, 10)
    assert [s.lr("g", t) for t in (9, 10, 11, 13, 19, 20, 29, 30, 31, 33)] == [0, .25, .5, 1, 1, 1, 1, .25, .5, 1]


def test_partly_trainable_group_does_not_restart_when_more_of_it_unfreezes():
    groups = [group("default", ["a", "b"], 1.0)]
    s = build_schedule(groups, {"a"}, [event(1, ["b"], warmup=5)], sched(warmup_steps=2), 3, 4)
    assert [s.lr("default", t) for t in range(6)] == [0.5, 1, 1, 1, 1, 1]


def test_step_events_start_at_their_step():
    groups = [group("s", ["b"], 1.0), group("default", ["a"], 1.0)]
    s = build_schedule(groups, {"a"}, [event(step=7, names=["b"], warmup=2)], sched(), 2, 5)
    assert [s.lr("s", t) for t in range(6, 10)] == [0, 0.5, 1, 1]


def test_step_event_past_the_end_is_an_error():
    with pytest.raises(UserError, match=r"freeze\.schedule\[1\]\.step=20: the run trains steps 0\.\.19 \(4 epochs x 5 "
                                        r"steps\).*raise trainer\.epochs"):
        build_schedule([group("default", ["a"], 1.0)], {"a"}, [event(step=20, names=["a"], where="freeze.schedule[1]")],
                       sched(), 4, 5)


def test_apply_writes_every_torch_group_by_name():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [a], "name": "g", "lr": 9.0}, {"params": [b], "name": "g", "lr": 9.0,
                                                                       "weight_decay": 0.0}])
    s = build_schedule([group("g", ["a", "b"], 0.5)], {"a"}, [], sched("linear"), 1, 10)
    s.apply(opt, 5)
    assert [pg["lr"] for pg in opt.param_groups] == [0.25, 0.25]


@pytest.mark.parametrize("name", ["constant", "cosine", "linear", "step", "onecycle"])
def test_initial_lrs_equal_step_zero_of_the_real_schedule(name):
    groups = [group("now", ["a"], 0.1, warmup=3), group("e0", ["b"], 0.2), group("later", ["c"], 0.3, warmup=2),
              group("nowarm", ["d"], 0.4, warmup=0)]
    events = [event(0, ["b"], warmup=4), event(2, ["c"]), event(1, ["d"])]
    cfg = sched(name, warmup_steps=1)
    for epochs, spe in ((4, 1), (5, 7), (40, 100)):
        assert initial_lrs(groups, {"a"}, events, cfg) == build_schedule(groups, {"a"}, events, cfg, epochs, spe).lrs(0)


@pytest.mark.parametrize(("key", "value", "match"), [
    ("warmup_steps", -1, r"optim\.scheduler\.warmup_steps=-1: must be a number of steps >= 0"),
    ("min_lr_mult", 1.5, r"optim\.scheduler\.min_lr_mult=1\.5"),
    ("step_epochs", 0, r"optim\.scheduler\.step_epochs=0"),
    ("pct_start", 1.0, r"optim\.scheduler\.pct_start=1\.0"),
    ("gamma", 0.0, r"optim\.scheduler\.gamma=0\.0"),
])
def test_bad_scheduler_values_are_errors(key, value, match):
    with pytest.raises(UserError, match=match):
        SchedulerConfig(**{key: value})


def test_onecycle_too_short_to_rise_is_an_error():
    with pytest.raises(UserError, match=r"optim\.scheduler\.pct_start=0\.3: one-cycle rises over pct_start x 3 steps"):
        build_schedule([group("default", ["a"], 1.0)], {"a"}, [], sched("onecycle"), 3, 1)


def test_restart_schedule_starts_the_curve_again_and_every_group_warms_up_again():
    # LP-FT: the head alone for 2 epochs, then everything, the cosine begun again over the rest of the run
    spe, epochs = 5, 4
    total = spe * epochs
    groups = [group("late", ["b"], 0.001), group("default", ["a"], 0.01)]
    restart = Event(trigger=Trigger(epoch=2), selectors=("b",), names=("b",), warmup_steps=4, restart=True)
    s = build_schedule(groups, {"a"}, [restart], sched("cosine", warmup_steps=2), epochs, spe)
    for t in range(total):
        if t < 10:  # the first phase: the run-wide cosine, `default` with the scheduler's warmup
            want = 0.01 * (1 + math.cos(math.pi * t / total)) / 2 * min(1.0, (t + 1) / 2)
            assert s.lr("default", t) == pytest.approx(want, rel=1e-12), t
        else:  # from step 10: a cosine over the 10 steps left, both groups warming up over the event's 4 steps
            cos = (1 + math.cos(math.pi * (t - 10) / (total - 10))) / 2
            warm = min(1.0, (t - 10 + 1) / 4)
            assert s.lr("default", t) == pytest.approx(0.01 * cos * warm, rel=1e-12), t
            assert s.lr("late", t) == pytest.approx(0.001 * cos * warm, rel=1e-12), t
    assert s.lr("default", 13) > 1.3 * s.lr("default", 9)  # back up the curve once warm


def test_a_restart_without_its_own_warmup_takes_the_schedulers_and_onecycle_needs_room():
    groups = [group("default", ["a"], 0.01)]
    restart = Event(trigger=Trigger(epoch=1), selectors=(), frozen=("z",), freeze_selectors=("z",), restart=True)
    s = build_schedule(groups, {"a"}, [restart], sched("linear", warmup_steps=3), 2, 10)
    assert s.lr("default", 10) == pytest.approx(0.01 / 3) and s.lr("default", 12) == pytest.approx(0.01 * (1 - 2 / 10))
    with pytest.raises(UserError, match="restart_schedule at step 19 leaves 1 steps"):
        build_schedule(groups, {"a"}, [Event(trigger=Trigger(step=19), selectors=(), restart=True)],
                       sched("onecycle", pct_start=0.3), 2, 10)
