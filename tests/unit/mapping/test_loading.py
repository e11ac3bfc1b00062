"""transfer_pipeline.mapping.apply and build(meta=True): the fast path (meta build, lazy source, assign) and its fallback.

What must hold: loaded tensors equal the source (and are the source's memory when dtype and
device agree); everything not loaded is initialised exactly once by its module's own init, on the
right device; buffers (BatchNorm statistics, non-persistent ones) keep their constructed values;
tied weights stay tied; same seed, same weights; and a model whose unloaded parts cannot be
initialised that way is built normally instead. (The same through whole runs:
tests/e2e/test_mapping_runs.py.)
"""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from transfer_pipeline.build import build_model, parameters_on_meta
from transfer_pipeline.mapping.apply import assign_weights, is_on_meta, load_model, copy_weights, planned_tensors, target_meta
from transfer_pipeline.mapping.plan import LoadEntry, LoadPlan
from transfer_pipeline.models import DigitsCNN
from transfer_pipeline.models.digits import PRETRAINED_0TO4
from transfer_pipeline.mapping.nested import choose_nested
from transfer_pipeline.sources.read import read_path

from helpers import make_plan

DIGITS = {"_target_": "transfer_pipeline.models.DigitsCNN", "num_classes": 5}
CPU = torch.device("cpu")


def fast_load(node, path, seed=0, device=CPU, **plan_kw):
    """What the pipeline does: seed, meta build, lazy source, plan, load."""
    torch.manual_seed(seed)
    model = build_model(node, meta=True)
    target = target_meta(model)
    src = choose_nested(read_path(path), target)
    plan = make_plan(src.meta, target, **plan_kw)

    def rebuild():
        torch.manual_seed(seed)
        return build_model(node)

    return load_model(model, plan, src, device, rebuild), plan, src


def all_real(model: nn.Module) -> bool:
    return not any(t.is_meta for t in [*model.parameters(), *model.buffers()])


# --- build on meta -----------------------------------------------------------------------------------

def test_meta_build_puts_parameters_on_meta_and_keeps_buffers():
    model = build_model(DIGITS, meta=True)
    assert all(p.is_meta for p in model.parameters())
    bn = model.stem[1]
    assert not bn.running_var.is_meta and torch.equal(bn.running_var, torch.ones(16))
    assert bn.num_batches_tracked.item() == 0
    assert is_on_meta(model)
    assert target_meta(model) == target_meta(DigitsCNN(num_classes=5))  # the plan sees the same names/shapes


def test_meta_build_costs_no_rng_and_no_memory():
    torch.manual_seed(0)
    build_model({"_target_": "torch.nn.Linear", "in_features": 20000, "out_features": 20000}, meta=True)  # 1.6 GB
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(1))  # the constructor's init ran on meta tensors


def test_parameters_on_meta_is_undone_afterwards():
    with parameters_on_meta():
        a = nn.Linear(2, 2)
    b = nn.Linear(2, 2)
    assert a.weight.is_meta and not b.weight.is_meta


def test_meta_build_falls_back_when_the_constructor_computes_with_parameters(caplog):
    with caplog.at_level(logging.INFO):
        model = build_model({"_target_": "test_loading.ComputesInInit"}, meta=True)
    assert not model.w.is_meta and torch.equal(model.norm, model.w.detach().norm())
    assert "cannot build on the meta device" in caplog.text


class ComputesInInit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))
        self.register_buffer("norm", torch.tensor(float(self.w.detach().norm())))  # fails on meta


# --- assign ------------------------------------------------------------------------------------------

def test_fast_load_assigns_the_mapped_memory_and_initialises_only_the_head():
    model, plan, src = fast_load(DIGITS, PRETRAINED_0TO4, exclude=["head"])
    sd = load_file(PRETRAINED_0TO4)
    assert all_real(model)
    state = model.state_dict()
    for name in plan.loaded:
        assert torch.equal(state[name], sd[name]), name
    # zero copy: the parameter is the safetensors file's memory map
    assert model.block2[0].weight.data_ptr() == src.get("block2.0.weight").data_ptr()
    assert isinstance(model.block2[0].weight, nn.Parameter) and model.block2[0].weight.requires_grad
    # the head: nn.Linear's own init, bounded by 1/sqrt(fan_in), nothing NaN
    w = model.head.weight
    assert not torch.isnan(w).any() and w.abs().max() <= 1 / 64 ** 0.5 and w.std() > 0
    assert not torch.equal(model.head.weight, sd["head.weight"])


def test_fast_load_of_a_torch_zip_is_zero_copy_too(tmp_path):
    sd = load_file(PRETRAINED_0TO4)
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    model, _, src = fast_load(DIGITS, path)
    assert model.stem[0].weight.data_ptr() == src.get("stem.0.weight").data_ptr()
    assert torch.equal(model.head.bias, sd["head.bias"])


def test_same_seed_same_weights_other_seed_other_head():
    a, _, _ = fast_load(DIGITS, PRETRAINED_0TO4, seed=3, exclude=["head"])
    b, _, _ = fast_load(DIGITS, PRETRAINED_0TO4, seed=3, exclude=["head"])
    c, _, _ = fast_load(DIGITS, PRETRAINED_0TO4, seed=4, exclude=["head"])
    for (n, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), n
    assert not torch.equal(a.head.weight, c.head.weight)
    assert torch.equal(a.stem[0].weight, c.stem[0].weight)


def test_unloaded_batchnorm_keeps_fresh_statistics_and_partly_loaded_module_is_completed(tmp_path):
    sd = load_file(PRETRAINED_0TO4)
    sd = {k: v for k, v in sd.items() if not k.startswith("block2.1.") and k != "head.bias"}
    path = tmp_path / "partial.safetensors"
    save_file(sd, path)
    model, plan, _ = fast_load(DIGITS, path)
    bn = model.block2[1]
    assert torch.equal(bn.weight, torch.ones(64)) and torch.equal(bn.bias, torch.zeros(64))  # BN's reset
    assert torch.equal(bn.running_mean, torch.zeros(64)) and torch.equal(bn.running_var, torch.ones(64))
    assert bn.num_batches_tracked.item() == 0
    assert torch.equal(model.head.weight, sd["head.weight"])  # loaded half of a module
    assert not torch.isnan(model.head.bias).any() and model.head.bias.abs().max() <= 1 / 64 ** 0.5
    assert torch.equal(model.stem[1].running_var, sd["stem.1.running_var"])  # loaded buffer
    model.train()(torch.randn(4, 1, 8, 8)).sum().backward()  # a usable model: forward and backward


class WithNonPersistent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("positions", torch.arange(4).float(), persistent=False)


def test_non_persistent_buffer_keeps_its_constructed_value(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"fc.weight": torch.full((4, 4), 2.0), "fc.bias": torch.zeros(4)}, path)
    model, _, _ = fast_load({"_target_": "test_loading.WithNonPersistent"}, path)
    assert torch.equal(model.positions, torch.arange(4).float())
    assert torch.equal(model.fc.weight, torch.full((4, 4), 2.0))


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.out = nn.Linear(4, 10, bias=False)
        self.out.weight = self.embed.weight


def test_tied_weights_stay_tied(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"embed.weight": torch.arange(40.0).reshape(10, 4)}, path)  # safetensors stores a tie once
    model, plan, _ = fast_load({"_target_": "test_loading.Tied"}, path)
    assert model.out.weight is model.embed.weight
    assert torch.equal(model.out.weight, torch.arange(40.0).reshape(10, 4))


def test_source_dtype_is_cast_once_to_the_targets(tmp_path):
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(PRETRAINED_0TO4).items()}
    path = tmp_path / "half.safetensors"
    save_file(sd, path)
    model, plan, _ = fast_load(DIGITS, path)
    assert plan.entries[0].source_dtype == "float16" and plan.entries[0].target_dtype == "float32"
    assert model.stem[0].weight.dtype == torch.float32
    assert torch.equal(model.stem[0].weight, sd["stem.0.weight"].float())
    assert model.stem[1].num_batches_tracked.dtype == torch.int64


def test_one_source_tensor_for_two_targets_gets_two_memories():
    src_t = torch.ones(3)
    from transfer_pipeline.sources.read import SourceWeights

    src = SourceWeights("test", {}, {"s": src_t}.__getitem__)
    plan = LoadPlan([LoadEntry(("s",), "a", (3,), "float32", "float32"), LoadEntry(("s",), "b", (3,), "float32", "float32")],
                    [], [], [], {}, [], "", 1.0)
    out = planned_tensors(plan, src, CPU)
    assert out["a"].data_ptr() == src_t.data_ptr() and out["b"].data_ptr() != src_t.data_ptr()
    assert torch.equal(out["b"], src_t)


# --- fallback to a normal build ----------------------------------------------------------------------

class OwnInit(nn.Module):
    """`scale` is made in __init__ and has no reset_parameters(): the fast path cannot recreate it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.full((4,), 0.5))


class PartialReset(nn.Module):
    """reset_parameters() covers `a` but not `b` (b is set in __init__): NaN-filling shows it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.empty(3))
        self.b = nn.Parameter(torch.full((3,), 7.0))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.a)


@pytest.mark.parametrize("node,check", [
    ({"_target_": "test_loading.OwnInit"}, lambda m: torch.equal(m.scale, torch.full((4,), 0.5))),
    ({"_target_": "test_loading.PartialReset"}, lambda m: torch.equal(m.b, torch.full((3,), 7.0))),
])
def test_unloaded_parameter_without_a_safe_init_falls_back_to_a_normal_build(tmp_path, caplog, node, check):
    path = tmp_path / "w.safetensors"
    save_file({"fc.weight": torch.full((4, 4), 3.0), "fc.bias": torch.ones(4), "a": torch.full((3,), 9.0)}, path)
    with caplog.at_level(logging.INFO):
        model, plan, _ = fast_load(node, path)
    assert "building the target normally" in caplog.text
    assert all_real(model) and check(model)
    for name in plan.loaded:
        assert torch.equal(model.state_dict()[name], load_file(path)[name])


def test_fallback_equals_the_normal_path(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"fc.weight": torch.full((4, 4), 3.0)}, path)
    fast, _, _ = fast_load({"_target_": "test_loading.OwnInit"}, path, seed=5)
    torch.manual_seed(5)
    normal = OwnInit()
    normal.fc.weight.data.fill_(3.0)
    for (n, x), y in zip(fast.state_dict().items(), normal.state_dict().values()):
        assert torch.equal(x, y), n


def test_assign_raises_before_changing_anything():
    from transfer_pipeline.mapping.apply import CannotInitialise
    from transfer_pipeline.sources.read import SourceWeights

    model = build_model({"_target_": "test_loading.OwnInit"}, meta=True)
    src = SourceWeights("t", {}, {}.__getitem__)
    plan = make_plan({}, target_meta(model))
    with pytest.raises(CannotInitialise, match=r"scale is not in the plan and its module <root> \(OwnInit\) has no "
                                               r"reset_parameters"):
        assign_weights(model, plan, src, CPU)
    assert all(p.is_meta for p in model.parameters())


def test_nothing_to_load_gives_the_normal_build():
    torch.manual_seed(1)
    meta = build_model(DIGITS, meta=True)
    model = load_model(meta, make_plan({}, target_meta(meta)), None, CPU, lambda: DigitsCNN(num_classes=5))
    assert all_real(model)


def test_normal_path_copies_into_an_initialised_model():
    sd = load_file(PRETRAINED_0TO4)
    model = DigitsCNN(num_classes=5)
    src = read_path(PRETRAINED_0TO4)
    before = model.stem[0].weight
    copy_weights(model, make_plan(src.meta, target_meta(model)), src)
    assert model.stem[0].weight is before and torch.equal(before, sd["stem.0.weight"])


@pytest.mark.cuda
def test_fast_load_straight_to_cuda():
    cuda = torch.device("cuda")
    model, plan, _ = fast_load(DIGITS, PRETRAINED_0TO4, device=cuda, exclude=["head"])
    assert all(t.device.type == "cuda" for t in [*model.parameters(), *model.buffers()])
    assert torch.equal(model.stem[0].weight.cpu(), load_file(PRETRAINED_0TO4)["stem.0.weight"])
    assert not torch.isnan(model.head.weight).any()


def test_constructor_that_loads_weights_is_built_normally(tmp_path, caplog):
    # pretrained_digits_cnn() calls load_state_dict in its constructor: on meta that would be lost
    sd = load_file(PRETRAINED_0TO4)
    path = tmp_path / "other.safetensors"
    save_file({k: v * 0 for k, v in sd.items() if k.startswith("stem.")}, path)
    with caplog.at_level(logging.INFO):
        model, plan, _ = fast_load({"_target_": "transfer_pipeline.models.pretrained_digits_cnn"}, path)
    assert "constructor copies data into parameter" in caplog.text
    assert torch.equal(model.head.weight, sd["head.weight"]) and torch.equal(model.block2[0].weight, sd["block2.0.weight"])
    assert torch.equal(model.stem[0].weight, torch.zeros_like(sd["stem.0.weight"]))  # loaded from the source


def test_parent_reset_runs_after_the_childs_as_in_the_constructor(tmp_path):
    # MultiheadAttention._reset_parameters zeroes out_proj.bias after Linear's own init
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2)
    path = tmp_path / "w.safetensors"
    save_file({k: v for k, v in mha.state_dict().items() if k != "out_proj.bias"}, path)
    model, plan, _ = fast_load({"_target_": "torch.nn.MultiheadAttention", "embed_dim": 8, "num_heads": 2}, path)
    assert plan.missing == ["out_proj.bias"]
    assert torch.equal(model.out_proj.bias, torch.zeros(8))
    assert torch.equal(model.in_proj_weight, mha.in_proj_weight)
