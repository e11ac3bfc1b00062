"""The Python API (`transfer_pipeline.plan_weights / load_weights / freeze / param_groups`): the same
cases, defaults and errors as the YAML, on models and checkpoints made in the test. (Its report against a
run's load_report.json: tests/e2e/test_api_runs.py.)"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import transfer_pipeline as tp
from transfer_pipeline.models import DigitsCNN
from transfer_pipeline.models.digits import PRETRAINED_0TO4
from transfer_pipeline.sources.read import read_path

SOURCE = "pkg://transfer_pipeline/assets/digits_cnn_0to4.safetensors"


@pytest.fixture
def sd() -> dict[str, torch.Tensor]:
    return load_file(PRETRAINED_0TO4)


def fresh(num_classes: int = 5) -> DigitsCNN:
    torch.manual_seed(0)
    return DigitsCNN(num_classes=num_classes)


# --- plan_weights / load_weights ------------------------------------------------------------------------

def test_plan_reads_no_tensor_data_and_changes_nothing(monkeypatch):
    real = read_path

    def spy(*args, **kwargs):
        weights = real(*args, **kwargs)
        weights.get = lambda name: pytest.fail(f"tensor {name} was read")
        return weights

    monkeypatch.setattr("transfer_pipeline.api.read_path", spy)
    model = fresh(3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = tp.plan_weights(model, SOURCE, exclude=["head"])
    assert len(report.loaded) == 18 and report.missing == ["head.weight", "head.bias"]
    assert report.unexpected == ["head.bias", "head.weight"] and report.mismatched == []
    assert 0.9 < report.loaded_fraction < 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_load_copies_bitwise_and_leaves_the_rest(sd):
    model = fresh(3)
    head = model.head.weight.detach().clone()
    report = tp.load_weights(model, SOURCE, exclude=["head"], expect={"missing": ["head"]})
    state = model.state_dict()
    assert all(torch.equal(state[n], sd[n]) for n in report.loaded)
    assert torch.equal(model.head.weight, head)


@pytest.mark.parametrize("kind", ["state_dict", "module", "nested", "wrapped_file"])
def test_every_kind_of_source(tmp_path, sd, kind):
    if kind == "state_dict":
        source = sd
    elif kind == "module":
        source = fresh()
        source.load_state_dict(sd)
    elif kind == "nested":  # source.key=auto picks what fits, as for a file
        source = {"state_dict": {"other.w": torch.ones(2)}, "ema": sd, "epoch": 3}
    else:
        source = tmp_path / "wrapped.pt"
        torch.save({"state_dict": {f"module._orig_mod.{k}": v for k, v in sd.items()}}, source)
    model = fresh()
    report = tp.load_weights(model, source, expect={"missing": []})
    assert report.missing == [] and torch.equal(model.block2[0].weight, sd["block2.0.weight"])


def test_explicit_key_and_prefix_options_are_the_yaml_keys(tmp_path, sd):
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in sd.items()}, "ema": sd}, path)
    report = tp.plan_weights(fresh(), path, key="state_dict", strip_prefixes=["net."])
    assert report.plan.stripped_prefix == "net." and report.missing == []


def test_a_model_on_the_meta_device_gets_its_tensors_assigned(sd):
    with torch.device("meta"):
        model = DigitsCNN(num_classes=3)
    report = tp.load_weights(model, SOURCE, exclude=["head"])
    assert not any(p.is_meta for p in model.parameters())
    assert torch.equal(model.stem[0].weight, sd["stem.0.weight"]) and report.missing == ["head.weight", "head.bias"]
    assert torch.isfinite(model.head.weight).all() and model.head.weight.std() > 0  # reset_parameters()


def test_rules_and_ops_work_as_in_yaml(sd):
    model = fresh(3)
    rules = [{"from": r"head\.(weight|bias)", "to": r"head.\1", "op": "select", "indices": [4, 1, 3]}]
    report = tp.load_weights(model, SOURCE, rules=rules, expect={"missing": []})
    assert torch.equal(model.head.weight, sd["head.weight"][[4, 1, 3]])
    assert report.plan.entries[-1].op == "select"


@pytest.mark.parametrize(("source", "options", "match"), [
    (SOURCE, {"exclud": ["head"]}, r"exclud: not an option of the loader.*Closest names: exclude"),
    (SOURCE, {"on_mismatch": "skp"}, r"mapping\.on_mismatch='skp': choose one of error, skip"),
    (SOURCE, {"expect": {"min_loaded": 1.5}}, r"mapping\.expect\.min_loaded=1\.5: a fraction"),
    (SOURCE, {"exclude": ["head"], "expect": {"missing": ["stem"]}}, r"mapping\.expect\.missing: 'stem' was expected"),
    (SOURCE, {"exclude": ["haed"]}, r"mapping\.exclude: selector 'haed' matches no parameter.*head"),
    (SOURCE, {"rules": [{"from": "nothing", "to": "x"}]}, r"mapping\.rules\[0\]: 'from: nothing' matches no source"),
    ({"decoder.w": torch.ones(3)}, {}, r"The source loaded nothing into the target"),
    ("/nowhere/ckpt.pt", {}, r"source\.path: no such file: /nowhere/ckpt\.pt"),
    (42, {}, r"source: a int is not a source"),
    (SOURCE, {"key": "ema"}, r"source\.key='ema': .* is a safetensors file, which is flat"),
])
def test_bad_inputs_raise_the_yaml_errors(source, options, match):
    with pytest.raises(tp.UserError, match=match):
        tp.load_weights(fresh(3), source, **options)


def test_a_shape_mismatch_is_an_error_unless_skipped(sd):
    with pytest.raises(tp.UserError, match=r"(?s)on_mismatch=error: 2 tensor\(s\) have another shape.*head\.weight"):
        tp.plan_weights(fresh(3), SOURCE)
    report = tp.plan_weights(fresh(3), SOURCE, on_mismatch="skip")
    assert {m["target"] for m in report.mismatched} == {"head.weight", "head.bias"}


def test_a_pickled_module_is_refused_unless_trusted(tmp_path, sd):
    path = tmp_path / "module.pt"
    model = fresh()
    model.load_state_dict(sd)
    torch.save(model, path)
    with pytest.raises(tp.UserError, match="source.trust_pickle=true"):
        tp.plan_weights(fresh(), path)
    assert tp.plan_weights(fresh(), path, trust_pickle=True).missing == []


def test_importing_the_package_imports_no_torch():
    code = "import sys, transfer_pipeline as tp; tp.__all__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- freeze ----------------------------------------------------------------------------------------------

def test_freeze_sets_requires_grad_and_holds_bn_statistics_through_model_train(sd):
    model = fresh()
    tp.load_weights(model, sd)
    plan = tp.freeze(model, trainable=["block2", "head"])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == plan.trainable
    assert plan.trainable == {n for n in sd if n.startswith(("block2.", "head.")) and "running" not in n
                              and "num_batches" not in n}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):  # a user's own loop: model.train() every step
        model.train()
        loss = model(torch.randn(8, 1, 8, 8)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = model.state_dict()
    for name in ("stem.1.running_mean", "block1.1.running_var", "stem.0.weight"):  # frozen layers: untouched
        assert torch.equal(state[name], sd[name]), name
    assert not torch.equal(state["block2.1.running_mean"], sd["block2.1.running_mean"])  # trains: updates


def test_freeze_bn_train_lets_every_layer_update():
    model = fresh()
    before = model.stem[1].running_mean.clone()
    tp.freeze(model, trainable=["head"], bn="train")
    model.train()
    model(torch.randn(8, 1, 8, 8))
    assert not torch.equal(model.stem[1].running_mean, before)


def test_freeze_again_replaces_the_bn_hold():
    model = fresh()
    tp.freeze(model, trainable=["head"])
    tp.freeze(model, trainable=None)  # everything trains now: auto lets every layer update
    before = model.stem[1].running_mean.clone()
    model.train()
    model(torch.randn(8, 1, 8, 8))
    assert not torch.equal(model.stem[1].running_mean, before)


@pytest.mark.parametrize(("options", "match"), [
    ({"trainable": ["haed"]}, r"freeze\.trainable: selector 'haed' matches no parameter"),
    ({"bn": "evil"}, r"freeze\.bn='evil': choose one of auto, eval, train, frozen"),
    ({"trainabel": ["head"]}, r"freeze\.trainabel: unknown key.*Closest names: trainable"),
    ({"schedule": [{"epoch": 1, "unfreeze": ["block2"]}]}, r"freeze\(schedule=\.\.\.\): schedules need the pipeline"),
])
def test_freeze_errors(options, match):
    with pytest.raises(tp.UserError, match=match):
        tp.freeze(fresh(), **options)


# --- param_groups ----------------------------------------------------------------------------------------

def test_param_groups_feed_any_optimizer_with_each_parameter_once():
    model = fresh()
    groups = tp.param_groups(model, lr=0.01, weight_decay=0.05,
                             groups=[{"name": "backbone", "params": ["stem", "block1", "block2"], "lr_mult": 0.1}])
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(set(ids)) == len(ids)
    lrs = {(g["name"], g["no_decay"]): (g["lr"], g["weight_decay"]) for g in groups}
    assert lrs[("backbone", False)] == pytest.approx((0.001, 0.05)) and lrs[("default", False)] == (0.01, 0.05)
    assert lrs[("backbone", True)] == pytest.approx((0.001, 0.0))  # adamw: biases and norms not decayed
    torch.optim.AdamW(groups).step()


def test_param_groups_layer_decay_over_top_level_modules():
    groups = tp.param_groups(fresh(), lr=1.0, layer_decay=0.5)
    assert {g["name"]: g["lr"] for g in groups} == {"stem": 0.125, "block1": 0.25, "block2": 0.5, "head": 1.0}


@pytest.mark.parametrize(("options", "match"), [
    ({"lr": -1.0}, r"optim\.lr=-1\.0: must be a finite number >= 0"),
    ({"groups": [{"params": ["head"]}, {"params": ["head.bias"]}]}, r"'head\.bias' is already in group 'head'"),
    ({"groups": [{"params": ["head"], "momentum": 0.9}]}, r"optim\.groups\[0\]\.momentum: momentum is for sgd"),
    ({"name": "lion"}, r"optim\.name='lion': choose one of adamw, adam, sgd"),
])
def test_param_groups_errors(options, match):
    with pytest.raises(tp.UserError, match=match):
        tp.param_groups(fresh(), **options)


def test_the_api_works_on_a_plain_torch_model(tmp_path):
    torch.manual_seed(1)
    src = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    path = tmp_path / "mlp.safetensors"
    save_file(src.state_dict(), path)
    dst = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    report = tp.load_weights(dst, path, exclude=["2"], expect={"missing": ["2"]})
    assert report.loaded == ["0.weight", "0.bias"] and torch.equal(dst[0].weight, src[0].weight)
    tp.freeze(dst, frozen=["0"])
    assert [p.requires_grad for p in dst.parameters()] == [False, False, True, True]


def test_a_frozen_model_still_deep_copies_and_saves_whole(tmp_path):
    import copy

    from torch.optim.swa_utils import AveragedModel

    model = fresh()
    tp.freeze(model, trainable=["head"])
    twin = copy.deepcopy(model)
    AveragedModel(model)  # deep-copies the model, as EMA does
    torch.save(model, tmp_path / "m.pt")
    before = twin.stem[1].running_mean.clone()
    twin.train()
    twin(torch.randn(4, 1, 8, 8))
    assert torch.equal(twin.stem[1].running_mean, before)  # the copy keeps the BN hold
