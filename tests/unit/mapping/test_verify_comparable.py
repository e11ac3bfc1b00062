"""mapping.verify judges a transfer by what can be compared: pairs whose computations cannot correspond
(a fused norm+activation, a skip on one side, a cell stepped per time step, other shapes) are reported as
not comparable, never as differences; a real error (swapped norms, a transposed weight) still fails and is
named. And a source model that holds part of its checkpoint runs, the rest listed."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import transfer_pipeline as tp
from transfer_pipeline.errors import UserError
from transfer_pipeline.mapping.verify import source_module, verify_outputs
from transfer_pipeline.models import BackboneNet, FeaturesNet
from transfer_pipeline.schema import SourceConfig, VerifyConfig
from transfer_pipeline.sources.read import read_object

IMAGES = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm affine values and running statistics: a swapped or wrong norm then shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def kinds(result) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for t, why in result.not_comparable.items():
        out.setdefault(why.split(":")[0], []).append(t)
    return out


def swap(a: torch.Tensor, b: torch.Tensor) -> None:
    with torch.no_grad():
        saved = a.clone()
        a.copy_(b), b.copy_(saved)


# --- 1. a norm fused with its activation against a plain norm and a separate activation ---------------------

class BNAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d in small: a BatchNorm2d that applies its activation in its own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(super().forward(x))


class FusedNet(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), BNAct(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), BNAct(8)
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn2(self.conv2(self.bn1(self.conv1(x)))).mean((2, 3)))


class SplitNet(nn.Module):
    """The same network with torchvision's layout: the ReLU a module of its own after each BatchNorm2d."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        self.conv2, self.bn2, self.act2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        return self.head(self.act2(self.bn2(self.conv2(x))).mean((2, 3)))


def fused_pair(classes: int = 5):
    torch.manual_seed(0)
    source, target = randomise_norms(FusedNet()), SplitNet(classes)
    report = tp.load_weights(target, source, on_mismatch="skip")
    return source, target, report.plan


def test_a_fused_norm_and_activation_is_not_comparable_and_the_transfer_verifies():
    source, target, plan = fused_pair()
    result = verify_outputs(source, target, plan, IMAGES)
    assert result.ok and result.first_difference is None and result.differing == []
    assert kinds(result) == {"fused": ["bn1", "bn2"]}
    assert result.not_comparable["bn1"].startswith("fused: BNAct vs BatchNorm2d; the source's BNAct is a "
                                                   "BatchNorm2d with more in its forward (its BatchNorm2d part agrees")
    assert {"conv1", "conv2", "head"} == set(result.max_abs_diff) and result.compared == 3  # not the fused ones
    assert result.final_diff is not None and result.final_diff < 1e-5
    assert result.describe().startswith(
        "mapping.verify: outputs of 3 paired modules and the final output agree (max |diff| ")
    assert "; 2 pair(s) not comparable: 2 fused (e.g. bn1: BNAct vs BatchNorm2d)" in result.describe()
    assert json.loads(json.dumps(result.to_dict(), allow_nan=False))["not_comparable"] == result.not_comparable
    # a new head: the final outputs are not compared; the norms' shared part still proves them
    source, target, plan = fused_pair(classes=3)
    result = verify_outputs(source, target, plan, IMAGES)
    assert result.ok and result.final_diff is None and set(result.not_comparable) == {"bn1", "bn2"}


@pytest.mark.parametrize("classes", [5, 3])  # the final output compared, and a new head (not compared)
def test_swapped_fused_norms_fail_at_the_first_swapped_norm(classes):
    source, target, plan = fused_pair(classes)
    swap(target.bn1.weight, target.bn2.weight)  # the shapes fit: the plan cannot tell, the outputs can
    swap(target.bn1.running_mean, target.bn2.running_mean)
    result = verify_outputs(source, target, plan, IMAGES)
    assert not result.ok and (result.first_difference, result.first_source) == ("bn1", "bn1")
    assert result.max_abs_diff["conv1"] == 0.0 and result.max_abs_diff["bn1"] > 0.1
    text = result.describe()
    assert text.startswith("mapping.verify: FAILED: first difference at target `bn1` (source `bn1`)")
    assert "`bn1`: fused (BNAct vs BatchNorm2d): its BatchNorm2d part differs" in text
    assert "bn1" not in result.not_comparable


class StridedNet(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.head(torch.relu(self.bn2(self.conv2(x))).mean((2, 3)))


def test_norms_swapped_across_a_stride_are_a_difference_not_other_shapes():
    """Two modules of one kind, called as often, with outputs of other sizes: the rules paired the wrong ones."""
    torch.manual_seed(0)
    source, target = randomise_norms(StridedNet()), StridedNet(classes=3)  # a new head: no final comparison
    rules = [{"from": r"bn1\.(\w+)", "to": r"bn2.\1"}, {"from": r"bn2\.(\w+)", "to": r"bn1.\1"}]
    plan = tp.load_weights(target, source, rules=rules, on_mismatch="skip").plan
    result = verify_outputs(source, target, plan, IMAGES)
    assert not result.ok and (result.first_difference, result.first_source) == ("bn1", "bn2")
    assert result.not_comparable == {} and result.final_diff is None
    assert ("`bn1`: outputs of other sizes, source (2, 8, 4, 4) vs target (2, 8, 8, 8), from two BatchNorm2ds: "
            "the rules may load it from another module's tensors") in result.describe()


# --- 2. a residual block against a counterpart without its skip -----------------------------------------------

class ResBlock(nn.Module):
    def __init__(self, c: int, act: bool) -> None:
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(c, c), nn.Linear(c, c), act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x + self.fc2(torch.relu(self.fc1(x)))
        return torch.relu(out) if self.act else out


class ResNet(nn.Module):
    def __init__(self, act: bool = False, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.blocks = nn.Sequential(ResBlock(8, act), ResBlock(8, act))
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class Stage(nn.Module):
    """The refactor: the block's layers in `body` (no skip); the stage adds the skip."""

    def __init__(self, c: int, act: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, c))
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x + self.body(x)
        return torch.relu(out) if self.act else out


class StageNet(nn.Module):
    def __init__(self, act: bool = False, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.stages = nn.Sequential(Stage(8, act), Stage(8, act))
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


BODY_RULES = [{"from": r"blocks\.(\d+)\.fc1\.(\w+)", "to": r"stages.\1.body.0.\2"},
              {"from": r"blocks\.(\d+)\.fc2\.(\w+)", "to": r"stages.\1.body.2.\2"}]
ROWS = torch.randn(4, 4, generator=torch.Generator().manual_seed(2))


def residual_pair(act: bool, classes: int = 3):
    torch.manual_seed(0)
    source, target = ResNet(act), StageNet(act, classes)
    report = tp.load_weights(target, source, rules=BODY_RULES, on_mismatch="skip")
    return source, target, report.plan


@pytest.mark.parametrize("act", [False, True])  # x + body(x), and ResNet's relu(x + body(x))
@pytest.mark.parametrize("classes", [3, 2])  # the final output compared, and a new head (not compared)
def test_a_block_whose_counterpart_lacks_its_skip_is_not_comparable(act, classes):
    source, target, plan = residual_pair(act, classes)
    result = verify_outputs(source, target, plan, ROWS)
    assert result.ok, result.describe()
    assert kinds(result) == {"skip": ["stages.0.body", "stages.1.body"]}
    then = ", then relu" if act else ""
    assert result.not_comparable["stages.0.body"] == (
        f"skip: ResBlock vs Sequential; the source's ResBlock adds its input (a skip{then}) that the target's "
        "Sequential lacks")
    assert {"stem", "stages.0.body.0", "stages.0.body.2", "stages.1.body.2"} <= set(result.max_abs_diff)
    assert "2 with a skip on one side (e.g. stages.0.body: ResBlock vs Sequential)" in result.describe()


@pytest.mark.parametrize("classes", [3, 2])
def test_a_transposed_weight_inside_a_block_without_its_skip_fails_there(classes):
    source, target, plan = residual_pair(False, classes)
    with torch.no_grad():  # a square weight: transposed, it still fits
        target.stages[1].body[2].weight.copy_(target.stages[1].body[2].weight.T.clone())
    result = verify_outputs(source, target, plan, ROWS)
    assert not result.ok and (result.first_difference, result.first_source) == ("stages.1.body.2", "blocks.1.fc2")
    assert "FAILED: first difference at target `stages.1.body.2` (source `blocks.1.fc2`)" in result.describe()
    assert result.max_abs_diff["stages.1.body.0"] == 0.0


class Scaled(nn.Module):
    """A block that doubles what its layer computes; its counterpart leaves the doubling to its parent."""

    def __init__(self, double: bool) -> None:
        super().__init__()
        self.fc, self.double = nn.Linear(8, 8), double

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * 2 if self.double else self.fc(x)


class Wrapper(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class ScaledNet(nn.Module):
    def __init__(self, inside: bool, classes: int = 3) -> None:
        super().__init__()
        self.stem, self.inside = nn.Linear(4, 8), inside
        self.block = Scaled(True) if inside else Wrapper(8)
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(self.stem(x))
        return self.head(y if self.inside else y * 2)


def test_blocks_of_different_kinds_that_differ_are_judged_by_the_final_output():
    """No skip, no subclass explains the difference: only final outputs that agree say the boundaries moved."""
    torch.manual_seed(0)
    source, target = ScaledNet(inside=True), ScaledNet(inside=False)
    plan = tp.load_weights(target, source).plan
    result = verify_outputs(source, target, plan, ROWS)
    assert result.ok and kinds(result) == {"different kinds": ["block"]} and result.final_diff is not None
    assert result.not_comparable["block"].startswith("different kinds: Scaled vs Wrapper; their outputs differ")
    target = ScaledNet(inside=False, classes=2)  # a new head: nothing shows the two blocks compute the same
    plan = tp.load_weights(target, source, on_mismatch="skip").plan
    result = verify_outputs(source, target, plan, ROWS)
    assert not result.ok and result.first_difference == "block" and result.not_comparable == {}


# --- 3. a layer run once per sequence against cells stepped once per time step ---------------------------------

class Encoder(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(size, size, num_layers=2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(x)[0]


class Tagger(nn.Module):
    def __init__(self, size: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.proj = nn.Linear(4, size)
        self.rnn = Encoder(size)
        self.head, self.out = nn.Linear(size, size), nn.Linear(size, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.head(self.rnn(self.proj(x))[:, -1]))


class StepCells(nn.Module):
    """One time step through two stacked LSTMCells: the parent calls it once per step."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.l0, self.l1 = nn.LSTMCell(size, size), nn.LSTMCell(size, size)

    def forward(self, x: torch.Tensor, state: list) -> torch.Tensor:
        state[0] = self.l0(x, state[0])
        state[1] = self.l1(state[0][0], state[1])
        return state[1][0]


class StreamingTagger(nn.Module):
    def __init__(self, size: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.proj = nn.Linear(4, size)
        self.rnn = StepCells(size)
        self.head, self.out = nn.Linear(size, size), nn.Linear(size, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        zeros = x.new_zeros(x.shape[0], x.shape[2])
        state = [(zeros, zeros), (zeros, zeros)]
        for t in range(x.shape[1]):
            h = self.rnn(x[:, t], state)
        return self.out(self.head(h))


def cell_rules(layers: tuple[str, str] = ("0", "1")) -> list[dict]:
    return [{"from": rf"rnn\.lstm\.(weight|bias)_(ih|hh)_l{src}", "to": rf"rnn.l{dst}.\1_\2"}
            for src, dst in zip(layers, "01")]


SEQUENCE = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(3))


def lstm_pair(rules: list[dict], classes: int = 3, exclude: tuple = ()):
    torch.manual_seed(0)
    source, target = Tagger().eval(), StreamingTagger(classes=classes)
    return source, target, tp.load_weights(target, source, rules=rules, on_mismatch="skip", exclude=list(exclude)).plan


def test_cells_stepped_per_time_step_are_not_comparable_to_a_layer_run_per_sequence():
    source, target, plan = lstm_pair(cell_rules())
    result = verify_outputs(source, target, plan, SEQUENCE)
    assert result.ok and result.final_diff is not None and result.final_diff < 1e-5, result.describe()
    assert result.not_comparable == {"rnn": "call count: 1x vs 6x; called 1x in the source, 6x in the target"}
    assert {"proj", "head", "out"} == set(result.max_abs_diff)
    assert "1 called another number of times (e.g. rnn: 1x vs 6x)" in result.describe()


def test_cells_loaded_from_the_wrong_layers_fail():
    source, target, plan = lstm_pair(cell_rules(("1", "0")))  # input size == hidden size: the shapes fit
    result = verify_outputs(source, target, plan, SEQUENCE)
    assert not result.ok and "the final outputs differ" in result.describe()
    assert (result.first_difference, result.first_source) == ("head", "head")  # the first compared one after rnn
    assert "the input of `head` already differs: downstream of not comparable `rnn` (call count: 1x vs 6x)" in \
        result.describe()
    # a new output layer: the final outputs are not compared, and a difference downstream of a not comparable
    # pair is no longer excused by them
    source, target, plan = lstm_pair(cell_rules(("1", "0")), classes=2)
    result = verify_outputs(source, target, plan, SEQUENCE)
    assert not result.ok and result.final_diff is None and result.first_difference == "head", result.describe()
    source, target, plan = lstm_pair(cell_rules(), classes=2)
    assert verify_outputs(source, target, plan, SEQUENCE).ok  # the right rules: head agrees
    # nothing compared after the cells: the result says their load is not proven (no proof either way)
    source, target, plan = lstm_pair(cell_rules(("1", "0")), classes=2, exclude=("head.*",))
    result = verify_outputs(source, target, plan, SEQUENCE)
    assert result.ok and "nothing compared after not comparable rnn: their load is not proven" in result.describe()


# --- 4. real models: timm's MobileNetV2 (BatchNormAct2d) into torchvision's ---------------------------------------

STAGES = [1, 2, 3, 4, 3, 3, 1]  # blocks per stage; torchvision numbers them features.1 .. features.17
FIRST = [("conv_dw", "conv.0.0"), ("bn1", "conv.0.1"), ("conv_pw", "conv.1"), ("bn2", "conv.2")]
INVERTED = [("conv_pw", "conv.0.0"), ("bn1", "conv.0.1"), ("conv_dw", "conv.1.0"), ("bn2", "conv.1.1"),
            ("conv_pwl", "conv.2"), ("bn3", "conv.3")]


def timm_to_torchvision_mobilenet() -> list[dict]:
    """timm's names (stages of blocks: blocks.1.1.conv_pw) to torchvision's (one flat list: features.3.conv.0.0)."""
    rules = [{"from": r"conv_stem\.weight", "to": "features.0.0.weight"},
             {"from": r"bn1\.(\w+)", "to": r"features.0.1.\1"},
             {"from": r"conv_head\.weight", "to": "features.18.0.weight"},
             {"from": r"bn2\.(\w+)", "to": r"features.18.1.\1"},
             {"from": r"classifier\.(\w+)", "to": r"classifier.1.\1"}]
    flat = [(i, j) for i, n in enumerate(STAGES) for j in range(n)]
    for k, (i, j) in enumerate(flat, start=1):
        rules += [{"from": rf"blocks\.{i}\.{j}\.{a}\.(\w+)", "to": rf"features.{k}.{b}.\1"}
                  for a, b in (FIRST if k == 1 else INVERTED)]
    return rules


@pytest.fixture(scope="module")
def mobilenets():
    timm = pytest.importorskip("timm")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    source = randomise_norms(timm.create_model("mobilenetv2_100", pretrained=False, num_classes=10))
    fused = sum(1 for m in source.modules()  # the norms with an activation of their own
                if type(m).__name__ == "BatchNormAct2d" and not isinstance(m.act, nn.Identity))
    return source, fused, torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4)), torchvision


def test_timm_mobilenet_into_torchvision_verifies_with_its_fused_norms_not_comparable(mobilenets):
    source, fused, images, torchvision = mobilenets
    target = torchvision.models.mobilenet_v2(num_classes=10)
    report = tp.load_weights(target, source, rules=timm_to_torchvision_mobilenet())
    assert report.plan.missing == [] and report.plan.unexpected == []
    result = verify_outputs(source, target, report.plan, images)
    assert result.ok and result.final_diff is not None and result.final_diff < 1e-4, result.describe()
    got = kinds(result)
    assert set(got) == {"fused", "skip"} and len(got["fused"]) == fused == 35 and len(got["skip"]) == 10
    assert got["fused"][0] == "features.0.1" and "features.3.conv" in got["skip"]  # blocks.1.1 adds its input
    assert result.compared > 70 and result.differing == []
    assert ("; 45 pair(s) not comparable: 35 fused (e.g. features.0.1: BatchNormAct2d vs BatchNorm2d), "
            "10 with a skip on one side (e.g. features.3.conv: InvertedResidual vs Sequential)") in result.describe()
    # two norms of one block swapped (the same shapes): the first swapped one is named
    swap(target.features[2].conv[0][1].weight, target.features[2].conv[1][1].weight)
    swap(target.features[2].conv[0][1].running_var, target.features[2].conv[1][1].running_var)
    result = verify_outputs(source, target, report.plan, images)
    assert not result.ok and (result.first_difference, result.first_source) == ("features.2.conv.0.1", "blocks.1.0.bn1")
    assert "the final outputs differ" in result.describe()


# --- 5. a source model that holds part of its checkpoint ----------------------------------------------------------

FEATURES = {"_target_": "transfer_pipeline.models.FeaturesNet"}


def checkpoint_with_heads(heads: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state = dict(FeaturesNet().state_dict())
    for i in range(heads):
        state[f"aux{i}.weight"], state[f"aux{i}.bias"] = torch.randn(5, 32), torch.randn(5)  # heads shaped like layer2
    return state


def test_a_source_model_holding_part_of_the_checkpoint_runs_and_lists_the_rest():
    state = checkpoint_with_heads(6)  # 12 tensors more than FeaturesNet holds
    notes: list[str] = []
    model = source_module(SourceConfig(path="x"), VerifyConfig(source_model=FEATURES), read_object(state), notes=notes)
    assert torch.equal(model.layer1.weight, state["layer1.weight"])
    assert notes == ["mapping.verify.source_model: FeaturesNet holds 8 of the source's 20 tensors; the other 12 are "
                     "left out of the run: aux0.bias, aux0.weight, aux1.bias, aux1.weight, aux2.bias, aux2.weight, "
                     "aux3.bias, aux3.weight, aux4.bias, aux4.weight +2 more"]
    notes.clear()
    source_module(SourceConfig(path="x"), VerifyConfig(source_model=FEATURES), read_object(checkpoint_with_heads(1)),
                  notes=notes)
    assert notes[0].endswith("the other 2 are left out of the run: aux0.bias, aux0.weight")
    # a target that loads a head the source model does not hold: the final outputs need not agree
    target = BackboneNet()  # its head from aux0: shaped like the source model's, computing something else
    rules = [{"from": r"features\.(\d+)\.(\w+)", "to": r"backbone.\1.\2"}, {"from": r"layer1\.(\w+)", "to": r"fc1.\1"},
             {"from": r"aux0\.(\w+)", "to": r"fc2.\1"}]
    plan = tp.load_weights(target, state, rules=rules).plan
    result = verify_outputs(model, target, plan, torch.randn(2, 1, 8, 8))
    assert result.ok and result.final_diff is None
    assert "final outputs not compared: 2 target tensor(s) load from tensors the source model does not hold" in \
        result.describe()


def test_a_source_model_with_tensors_the_checkpoint_lacks_is_refused_naming_them():
    state = checkpoint_with_heads(2)
    del state["layer1.weight"]
    with pytest.raises(UserError, match=r"FeaturesNet does not fit the source's tensors: not in the source: "
                                        r"layer1\.weight\. Name the checkpoint's own architecture"):
        source_module(SourceConfig(path="x"), VerifyConfig(source_model=FEATURES), read_object(state))
    node = {"_target_": "transfer_pipeline.models.FeaturesNet", "num_classes": 7}
    with pytest.raises(UserError, match=r"another shape \(model vs source\): layer2\.weight \(7, 32\) vs \(5, 32\), "
                                        r"layer2\.bias \(7,\) vs \(5,\)\."):
        source_module(SourceConfig(path="x"), VerifyConfig(source_model=node), read_object(checkpoint_with_heads(0)))
    qkv = {"_target_": "transfer_pipeline.models.QKVTransformer"}  # nothing of it in the file: 10 named, then a count
    with pytest.raises(UserError, match=r"not in the source: (\S+, ){9}\S+ \+\d+ more\."):
        source_module(SourceConfig(path="x"), VerifyConfig(source_model=qkv), read_object(checkpoint_with_heads(0)))
