"""mapping.verify: a load proved numerically (source and target run on one input) or tensor by tensor."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import transfer_pipeline as tp
from transfer_pipeline.errors import UserError
from transfer_pipeline.mapping.plan import LoadEntry, LoadPlan
from transfer_pipeline.mapping.pairs import paired_modules
from transfer_pipeline.mapping.verify import source_module, verify_inputs, verify_outputs
from transfer_pipeline.mapping.verify_tensors import verify_tensors
from transfer_pipeline.models import BackboneNet, FeaturesNet, GPT2StyleTransformer, MHATransformer, QKVTransformer
from transfer_pipeline.schema import SourceConfig, VerifyConfig
from transfer_pipeline.sources.read import read_object, read_path

from helpers import compose_config

X = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def shipped_rules(experiment: str) -> list:
    return compose_config(f"experiment={experiment}").mapping.rules


@pytest.fixture(scope="module")
def qkv_rules():
    return shipped_rules("qkv_to_mha")


@pytest.fixture(scope="module")
def renamed_rules():
    return shipped_rules("renamed_layers")


def loaded(source: nn.Module, target: nn.Module, **options):
    report = tp.load_weights(target, source, **options)
    return source, target, report.plan


def names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules()]


# --- verify_outputs on the shipped model pairs --------------------------------------------------

def test_qkv_to_mha_load_agrees_module_by_module(qkv_rules):
    torch.manual_seed(0)
    source, target, plan = loaded(QKVTransformer(), MHATransformer(), rules=qkv_rules)
    result = verify_outputs(source, target, plan, X)
    assert result.ok and result.first_difference is None
    assert result.compared >= 10 and {"embed", "layers.0", "layers.0.mlp.0", "layers.1", "head"} <= set(result.max_abs_diff)
    assert result.final_diff is not None and result.final_diff < 1e-5  # the whole model is loaded: compared
    assert result.describe().startswith(f"mapping.verify: outputs of {result.compared} paired modules and the final")
    # MultiheadAttention computes out_proj inside its own forward: paired, but it never runs as a module
    assert "layers.0.attn.out_proj" not in result.max_abs_diff and "not compared" in result.describe()
    json.dumps(result.to_dict(), allow_nan=False)


def test_gpt2_conv1d_transposes_pair_their_modules():
    torch.manual_seed(0)
    source, target, plan = loaded(GPT2StyleTransformer(), MHATransformer(), rules=shipped_rules("conv1d_to_mha"))
    result = verify_outputs(source, target, plan, X)
    pairs = dict((t, s) for s, t in paired_modules(plan, names(source), names(target)))
    assert pairs["layers.0.attn"] == "h.0.attn" and pairs["layers.0.mlp.0"] == "h.0.mlp.c_fc"  # by transpose
    assert result.ok and "layers.0.attn" in result.max_abs_diff  # MHA's (out, None) vs a tensor: position 0


def test_renamed_layers_pair_leaves_and_containers(renamed_rules):
    torch.manual_seed(0)
    source, target, plan = loaded(FeaturesNet(), BackboneNet(), rules=renamed_rules)
    assert paired_modules(plan, names(source), names(target)) == [
        ("features", "backbone"), ("features.0", "backbone.0"), ("features.3", "backbone.3"),
        ("layer1", "fc1"), ("layer2", "fc2")]
    result = verify_outputs(source, target, plan, X)
    assert result.ok and result.compared == 5 and result.final_diff is not None


@pytest.mark.parametrize("tensor, module, source_module_name", [
    ("layers.0.mlp.0.weight", "layers.0.mlp.0", "enc.0.mlp.0"),
    ("layers.1.norm2.bias", "layers.1.norm2", "enc.1.norm2"),
])
def test_a_corrupted_tensor_names_its_module_first(qkv_rules, tensor, module, source_module_name):
    torch.manual_seed(0)
    source, target, plan = loaded(QKVTransformer(), MHATransformer(), rules=qkv_rules)
    with torch.no_grad():  # one element: adding 1 to a whole weight after a LayerNorm (zero-mean rows) changes nothing
        target.get_parameter(tensor).view(-1)[3] += 1.0
    result = verify_outputs(source, target, plan, X)
    assert not result.ok
    assert (result.first_difference, result.first_source) == (module, source_module_name)
    assert result.differing[0] == module and module.split(".")[0] + "." + module.split(".")[1] in result.differing
    assert result.max_abs_diff[module] > 0.1 and result.max_abs_diff["embed"] < 1e-6  # before it: still equal
    assert f"first difference at target `{module}` (source `{source_module_name}`)" in result.describe()
    assert "FAILED" in result.describe() and "final outputs differ" in result.describe()


def test_a_corrupted_linear_in_the_renamed_net(renamed_rules):
    torch.manual_seed(0)
    source, target, plan = loaded(FeaturesNet(), BackboneNet(), rules=renamed_rules)
    with torch.no_grad():
        target.fc1.weight[0, 0] += 1.0
    result = verify_outputs(source, target, plan, X)
    assert (result.first_difference, result.first_source) == ("fc1", "layer1")
    assert "backbone" not in result.differing and result.max_abs_diff["backbone"] == 0.0


def test_a_wrong_rule_swapping_q_and_k_is_caught(qkv_rules):
    rules = [dict(r) for r in qkv_rules]
    q, k, v = rules[0]["from"]
    rules[0]["from"] = [k, q, v]  # same shapes: the plan cannot tell, the outputs can
    torch.manual_seed(0)
    source, target, plan = loaded(QKVTransformer(), MHATransformer(), rules=rules)
    result = verify_outputs(source, target, plan, X)
    assert not result.ok
    # the fused attention pairs with no single source module: norm2 is the first output that differs, but its
    # input already does; the block around the attention is the first to go wrong on agreeing inputs
    assert result.differing[0] == "layers.0.norm2" and result.max_abs_diff["layers.0.norm1"] == 0.0
    assert (result.first_difference, result.first_source) == ("layers.0", "enc.0")
    assert "first difference at target `layers.0` (source `enc.0`)" in result.describe()


def test_a_difference_outside_every_paired_module_is_said_to_come_before_it(qkv_rules):
    torch.manual_seed(0)
    source, target, plan = loaded(QKVTransformer(), MHATransformer(), rules=qkv_rules)
    with torch.no_grad():
        target.pos[0, 2, 5] += 1.0  # a root parameter: no module but the root holds it
    result = verify_outputs(source, target, plan, X)
    assert result.max_abs_diff["embed"] == 0.0 and result.first_difference == result.differing[0] == "layers.0.norm1"
    assert "the input of `layers.0.norm1` already differs" in result.describe()


def test_a_new_head_leaves_the_final_output_uncompared(renamed_rules):
    torch.manual_seed(0)
    source, target, plan = loaded(FeaturesNet(num_classes=5), BackboneNet(num_classes=3), rules=renamed_rules,
                                  on_mismatch="skip")
    result = verify_outputs(source, target, plan, X)
    assert result.ok and result.final_diff is None
    assert "final outputs not compared: shapes source (4, 5) vs target (4, 3) (a new head)" in result.describe()
    assert "fc2" not in result.max_abs_diff and {"backbone", "fc1"} <= set(result.max_abs_diff)


def test_an_unloaded_head_of_the_same_shape_is_not_compared(renamed_rules):
    torch.manual_seed(0)
    source, target, plan = loaded(FeaturesNet(), BackboneNet(), rules=renamed_rules, exclude=["fc2"])
    result = verify_outputs(source, target, plan, X)
    assert result.ok and result.final_diff is None and "not loaded (fc2.weight, fc2.bias)" in result.final
    assert "fc2" not in result.max_abs_diff


def test_input_that_does_not_fit_names_input_shape(qkv_rules):
    torch.manual_seed(0)
    source, target, plan = loaded(QKVTransformer(), MHATransformer(), rules=qkv_rules)
    source.train(), target.train()
    with pytest.raises(UserError, match=r"mapping\.verify\.input_shape: the source model \(QKVTransformer\) cannot "
                                        r"run on the verify input \(2, 3, 8, 8\)"):
        verify_outputs(source, target, plan, torch.randn(2, 3, 8, 8))
    assert source.training and target.training and target.layers[0].training  # modes restored, hooks removed
    assert not target.layers[0]._forward_hooks and not source.enc[0]._forward_hooks


def test_modes_are_restored_and_outputs_taken_in_eval(renamed_rules):
    torch.manual_seed(0)
    source, target = FeaturesNet(), BackboneNet()
    source.features.insert(1, nn.Dropout(0.9)), target.backbone.insert(1, nn.Dropout(0.9))  # differ in train mode
    source, target, plan = loaded(source, target, rules=[{"from": r"features\.(\d+)\.(weight|bias)",
                                                          "to": r"backbone.\1.\2"}, renamed_rules[1]])
    target.train(), source.train()
    target.backbone[1].eval()
    assert verify_outputs(source, target, plan, X).ok
    assert target.training and source.training and not target.backbone[1].training


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x), None  # a tuple with a non-tensor: compared element-wise


class KeywordNet(nn.Module):
    """forward(pixels=...) -> {'logits': ...}; `inner` runs twice."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Inner()
        self.out = nn.Linear(8, 3)

    def forward(self, pixels):
        y = self.inner(self.inner(pixels)[0])[0]
        return {"logits": self.out(y)}


def test_dict_inputs_tuple_outputs_and_modules_run_twice():
    torch.manual_seed(0)
    source, target, plan = loaded(KeywordNet(), KeywordNet())
    inputs = {"pixels": torch.randn(2, 8)}
    result = verify_outputs(source, target, plan, inputs, source_output="logits", target_output="logits")
    assert result.ok and result.final_diff == 0.0 and {"inner", "inner.fc", "out"} <= set(result.max_abs_diff)
    assert "ran more than once" in result.describe() and "first calls were compared" in result.describe()
    # without `model.output` a dict's `logits` are the logits (as model_io.pick_output takes them)
    result = verify_outputs(source, target, plan, inputs)
    assert result.ok and result.final_diff == 0.0
    with torch.no_grad():
        target.inner.fc.bias[0] += 1.0
    result = verify_outputs(source, target, plan, inputs, source_output="logits", target_output="logits")
    assert result.first_difference == "inner.fc" and result.differing[:2] == ["inner.fc", "inner"]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch deprecates jit.script / jit.save
def test_a_torchscript_source_compares_the_final_output(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "features.pt"
    torch.jit.save(torch.jit.script(FeaturesNet()), str(path))
    weights = read_path(path)
    model = source_module(SourceConfig(path=str(path)), VerifyConfig(enabled=True), weights)
    assert isinstance(model, torch.jit.ScriptModule)
    target = BackboneNet()
    rules = [{"from": r"features\.(\d+)\.(weight|bias)", "to": r"backbone.\1.\2"}, {"from": r"layer(\d+)\.(.*)", "to": r"fc\1.\2"}]
    plan = tp.load_weights(target, weights, rules=rules).plan
    result = verify_outputs(model, target, plan, X)
    assert result.ok and result.compared == 0 and result.final_diff is not None and "TorchScript" in result.describe()
    with torch.no_grad():
        target.fc2.bias += 1.0
    assert not verify_outputs(model, target, plan, X).ok
    # no hooks and a new head: nothing at all could be compared, which proves nothing
    other = BackboneNet(num_classes=3)
    plan = tp.load_weights(other, weights, rules=rules, on_mismatch="skip").plan
    result = verify_outputs(model, other, plan, X)
    assert not result.ok and result.compared == 0 and "FAILED: nothing compared: final outputs not compared" in \
        result.describe()


# --- the source as a model --------------------------------------------------------------------------

def test_the_source_model_is_the_one_read_and_a_named_class_is_built_with_the_source_tensors(qkv_rules):
    from transfer_pipeline.sources.read import read_source

    node = {"_target_": "transfer_pipeline.models.QKVTransformer", "num_classes": 5}
    read = read_source(SourceConfig(model=node))  # source.model: built once, kept by the reader
    rng = torch.random.get_rng_state()
    assert source_module(SourceConfig(model=node), VerifyConfig(), read) is read.module  # not built a second time
    assert torch.equal(torch.random.get_rng_state(), rng)
    torch.manual_seed(0)
    original = QKVTransformer(num_classes=5)
    weights = read_object(original.state_dict())
    rng = torch.random.get_rng_state()
    rebuilt = source_module(SourceConfig(path="x"), VerifyConfig(source_model=node), weights)  # init, then filled
    assert torch.equal(torch.random.get_rng_state(), rng)  # the run's later randomness is not shifted by verify
    assert rebuilt is not original
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in rebuilt.state_dict().items())
    # verify.source_model: the checkpoint's class; `module.` stripped like the plan did
    wrapped = read_object({f"module.{k}": v for k, v in original.state_dict().items()})
    built = source_module(SourceConfig(path="x"), VerifyConfig(source_model=node), wrapped, stripped_prefix="module.")
    assert torch.equal(built.enc[0].q.weight, original.enc[0].q.weight)
    assert source_module(SourceConfig(path="x"), VerifyConfig(), weights) is None  # a plain state dict: no model


def test_a_source_model_that_does_not_fit_the_checkpoint():
    weights = read_object(FeaturesNet().state_dict())
    node = {"_target_": "transfer_pipeline.models.BackboneNet"}
    with pytest.raises(UserError, match=r"mapping\.verify\.source_model: BackboneNet does not fit the source's "
                                        r"tensors: not in the source: backbone\.0\.weight, "):
        source_module(SourceConfig(path="x"), VerifyConfig(source_model=node), weights)


# --- verify_tensors: without a source model ---------------------------------------------------------

def test_loaded_tensors_equal_their_sources_bitwise(qkv_rules):
    torch.manual_seed(0)
    source = QKVTransformer()
    weights = read_object(source)
    target = MHATransformer()
    plan = tp.load_weights(target, weights, rules=qkv_rules).plan
    check = verify_tensors(plan, weights, target.state_dict())
    assert check.ok and check.checked == len(plan.entries) == 31 and check.first_mismatch is None
    assert "all 31 loaded tensors equal their source tensors" in check.describe()
    with torch.no_grad():  # one ulp in one element of the fused tensor: bitwise, not within a tolerance
        w = target.layers[1].attn.in_proj_weight
        w[40, 3] = torch.nextafter(w[40, 3], torch.tensor(1.0))
    check = verify_tensors(plan, weights, target.state_dict())
    assert not check.ok and check.mismatched == ["layers.1.attn.in_proj_weight"]
    assert ("layers.1.attn.in_proj_weight (from enc.1.q.weight + enc.1.k.weight + enc.1.v.weight by concat)"
            in check.describe())
    state = dict(target.state_dict())
    del state["head.bias"]
    assert "head.bias: not in the target's state dict" in verify_tensors(plan, weights, state).details[-1]
    json.dumps(check.to_dict())


def test_tensors_are_compared_in_the_target_dtype(renamed_rules):
    torch.manual_seed(0)
    source = FeaturesNet()
    weights = read_object(source)
    target = BackboneNet().half()
    plan = tp.load_weights(target, weights, rules=renamed_rules).plan
    assert verify_tensors(plan, weights, target.state_dict()).ok  # fp32 -> fp16, cast as the load casts
    wide = BackboneNet().double()
    plan = tp.load_weights(wide, weights, rules=renamed_rules).plan
    result = verify_outputs(source, wide, plan, X)  # each model gets the input in its own dtype
    assert result.ok and result.compared == 5 and 0 < result.final_diff < 1e-5


# --- verify_inputs ----------------------------------------------------------------------------------

def test_the_verify_input_is_seeded():
    cfg = VerifyConfig(enabled=True, input_shape=[2, 1, 8, 8], seed=3)
    a, b = verify_inputs(cfg), verify_inputs(cfg, sample=torch.zeros(1))
    assert a.shape == (2, 1, 8, 8) and torch.equal(a, b)  # input_shape wins over a sample
    assert not torch.equal(a, verify_inputs(VerifyConfig(enabled=True, input_shape=[2, 1, 8, 8], seed=4)))
    batch = {"input_ids": torch.zeros(2, 4, dtype=torch.long)}
    assert verify_inputs(VerifyConfig(enabled=True), batch) is batch
    with pytest.raises(UserError, match=r"mapping\.verify\.enabled=true: give mapping\.verify\.input_shape"):
        verify_inputs(VerifyConfig(enabled=True))


# --- paired_modules: names only ---------------------------------------------------------------------

def plan_of(entries, missing=(), unexpected=(), prefix=""):
    return LoadPlan([LoadEntry(tuple(s), t, (1,), "float32", "float32", op) for s, t, op in entries],
                    list(missing), list(unexpected), [], {}, [], prefix, 1.0)


def test_pairs_renamed_leaves_and_their_containers_in_target_order():
    plan = plan_of([(["enc.1.w.weight"], "blk.1.lin.weight", "copy"), (["enc.0.w.weight"], "blk.0.lin.weight", "copy"),
                    (["enc.0.w.bias"], "blk.0.lin.bias", "transpose")])
    pairs = paired_modules(plan, ["", "enc", "enc.0", "enc.0.w", "enc.1", "enc.1.w"],
                           ["", "blk", "blk.0", "blk.0.lin", "blk.1", "blk.1.lin"])
    assert pairs == [("enc", "blk"), ("enc.0", "blk.0"), ("enc.0.w", "blk.0.lin"), ("enc.1", "blk.1"),
                     ("enc.1.w", "blk.1.lin")]


def test_a_fused_tensor_pairs_only_at_the_block_that_holds_all_its_parts():
    plan = plan_of([(["b.q.weight", "b.k.weight", "b.v.weight"], "m.attn.in_proj_weight", "concat"),
                    (["b.o.weight"], "m.attn.out_proj.weight", "copy"), (["b.ln.weight"], "m.ln.weight", "copy")])
    pairs = paired_modules(plan, ["", "b", "b.q", "b.k", "b.v", "b.o", "b.ln"],
                           ["", "m", "m.attn", "m.attn.out_proj", "m.ln"])
    assert pairs == [("b", "m"), ("b.o", "m.attn.out_proj"), ("b.ln", "m.ln")]  # no single module is m.attn


def test_a_split_source_pairs_only_its_parent():
    plan = plan_of([(["a.qkv.weight"], "t.q.weight", "split"), (["a.qkv.weight"], "t.k.weight", "split")])
    # t (a container of q and k) and a.qkv (a leaf) hold the same numbers; containers pair with containers
    assert paired_modules(plan, ["", "a", "a.qkv"], ["", "t", "t.q", "t.k"]) == [("a", "t")]


def test_a_source_leaf_split_across_a_container_pairs_with_it_when_there_is_no_wrapper():
    # an nn.LSTM's layers into per-layer LSTMCells: no target leaf holds all of `lstm`, no source wrapper either
    plan = plan_of([(["lstm.weight_ih_l0"], "rnn.cells.0.weight_ih", "copy"),
                    (["lstm.weight_ih_l1"], "rnn.cells.1.weight_ih", "copy"), (["proj.weight"], "proj.weight", "copy")])
    target = ["", "proj", "rnn", "rnn.cells", "rnn.cells.0", "rnn.cells.1"]
    assert paired_modules(plan, ["", "lstm", "proj"], target) == [("proj", "proj"), ("lstm", "rnn.cells")]


def test_a_pair_on_a_module_list_moves_to_the_module_that_calls_it():
    """verify hooks `rnn` (called once per step), not its never-called `cells` list: reported by call count."""
    class Cells(nn.Module):
        def __init__(self):
            super().__init__()
            self.cells = nn.ModuleList([nn.LSTMCell(4, 4), nn.LSTMCell(4, 4)])

        def forward(self, x, state):
            for i, cell in enumerate(self.cells):
                state[i] = cell(x, state[i])
                x = state[i][0]
            return x

    class Streaming(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = Cells(), nn.Linear(4, 2)

        def forward(self, x):
            zeros = x.new_zeros(x.shape[0], 4)
            state = [(zeros, zeros), (zeros, zeros)]
            return self.head(torch.stack([self.rnn(x[:, t], state) for t in range(x.shape[1])], 1))

    class Sequence(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.head = nn.LSTM(4, 4, num_layers=2, batch_first=True), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.lstm(x)[0])

    torch.manual_seed(0)
    rules = [{"from": r"lstm\.(\w+)_l(\d+)", "to": r"rnn.cells.\2.\1"}]
    source, target, plan = loaded(Sequence(), Streaming(), rules=rules)
    result = verify_outputs(source, target, plan, torch.randn(2, 5, 4))
    assert result.ok and "rnn" in result.not_comparable and "5x" in result.not_comparable["rnn"]
    assert "rnn.cells" not in result.not_comparable and result.final_diff is not None


def test_ops_that_change_the_function_and_unloaded_tensors_block_a_pair():
    plan = plan_of([(["c.weight"], "c.weight", "adapt_channels"), (["d.weight"], "d.weight", "copy"),
                    (["h.weight"], "h.weight", "select"), (["e.weight"], "e.weight", "interpolate"),
                    (["f.weight"], "f.weight", "copy"), (["n.weight"], "n.weight", "copy")],
                   missing=["f.bias", "n.num_batches_tracked"])
    mods = ["", "c", "d", "h", "e", "f", "n"]
    assert paired_modules(plan, mods, mods) == [("d", "d"), ("n", "n")]  # the BN counter does not count


def test_a_stripped_wrapper_prefix_and_a_wrapper_chain():
    plan = plan_of([(["module.cls.weight"], "head.0.weight", "copy")], unexpected=["module.aux.weight"],
                   prefix="module.")
    # the leaf pairs with the leaf; the source root also holds the unused `aux`, so it is no wrapper of cls
    assert paired_modules(plan, ["", "cls", "aux"], ["", "head", "head.0"]) == [("cls", "head.0")]
    plan.unexpected = []
    assert paired_modules(plan, ["", "cls"], ["", "head", "head.0"]) == [("", "head"), ("cls", "head.0")]
    assert paired_modules(plan, ["", "wrap", "wrap.cls"], ["", "head", "head.0"]) == []  # not in the source model
    plan = plan_of([(["x.y.weight"], "head.0.weight", "copy")])
    assert paired_modules(plan, ["", "x", "x.y"], ["", "head", "head.0"]) == [("x", "head"), ("x.y", "head.0")]


def test_a_leaf_pairs_with_the_leaf_not_with_its_wrapper():
    plan = plan_of([(["blk.0.weight"], "fc.weight", "copy"), (["blk.0.bias"], "fc.bias", "copy")])
    # blk = Sequential(Linear, ReLU) would add the activation: the Linear is fc's counterpart
    assert paired_modules(plan, ["", "blk", "blk.0", "blk.1"], ["", "fc"]) == [("blk.0", "fc")]


def test_a_fused_leaf_pairs_with_the_module_holding_its_parts():
    plan = plan_of([(["b.q.weight"], "blk.fused.weight", "copy"), (["b.k.weight", "b.v.weight"], "blk.fused.kv", "concat")])
    # a custom attention owning one fused tensor vs one holding q, k, v Linears: the same function
    assert paired_modules(plan, ["", "b", "b.q", "b.k", "b.v"], ["", "blk", "blk.fused"]) == [("", "blk"),
                                                                                             ("b", "blk.fused")]


def test_one_source_module_feeding_two_targets_pairs_neither():
    plan = plan_of([(["s.weight"], "a.weight", "copy"), (["s.bias"], "b.bias", "copy")])
    assert paired_modules(plan, ["", "s"], ["", "a", "b"]) == []
