"""`@head` / `@blocks` (transfer_pipeline/model_parts.py): found in real models, expanded into every
selector field, errors, the plan line and summary.json. Nothing here downloads: every model is built
from its constructor or a tiny config, with no weights."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import transfer_pipeline as tp
from transfer_pipeline.errors import UserError
from transfer_pipeline.model_parts import expand_freeze, expand_mapping, expand_optim, model_parts, uses_parts
from transfer_pipeline.models import DigitsCNN
from transfer_pipeline.models.text import TextTransformer
from transfer_pipeline.tuning.batchnorm import resolve_bn_modes
from transfer_pipeline.tuning.freezing import plan_freezing

RESNET_BLOCKS = [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]


def tv_resnet18():
    import torchvision

    return torchvision.models.resnet18(num_classes=3)


def tv_mobilenet_v2():
    import torchvision

    return torchvision.models.mobilenet_v2(num_classes=3)


def tv_vgg11():
    import torchvision

    with torch.device("meta"):  # 130M parameters: structure (and a plan: names and shapes) is all the tests need
        return torchvision.models.vgg11(num_classes=3)


def tv_vit():
    """torchvision's VisionTransformer (vit_b_16's class) at a test size: vit_b_16 itself takes seconds to build."""
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=16, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64,
                             num_classes=3)


def timm_model(name: str, **kw):
    timm = pytest.importorskip("timm")
    return timm.create_model(name, pretrained=False, **kw)


def hf_bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32, num_labels=3)
    return transformers.BertForSequenceClassification(config)


CASES = {  # model -> (@head, @blocks, recognised)
    "digits_cnn": (lambda: DigitsCNN(num_classes=5), ["head"], [["stem"], ["block1"], ["block2"]], False),
    "torchvision_resnet18": (tv_resnet18, ["fc"], RESNET_BLOCKS, True),
    "torchvision_mobilenet_v2": (tv_mobilenet_v2, ["classifier.1"], [[f"features.{i}"] for i in range(19)], True),
    "torchvision_vgg11": (tv_vgg11, ["classifier.6"],  # its convolutions; the hidden classifier layers join the last
                          [[f"features.{i}"] for i in (0, 3, 6, 8, 11, 13, 16)]
                          + [["features.18", "classifier.0", "classifier.3"]], True),
    "torchvision_vit": (tv_vit, ["heads.head"],
                        [["class_token", "conv_proj", "encoder.pos_embedding"], ["encoder.layers.encoder_layer_0"],
                         ["encoder.layers.encoder_layer_1"], ["encoder.layers.encoder_layer_2", "encoder.ln"]], True),
    "timm_resnet18": (lambda: timm_model("resnet18", num_classes=5), ["fc"], RESNET_BLOCKS, True),
    "timm_convnext": (lambda: timm_model("convnext_atto", num_classes=5), ["head.fc"],
                      [["stem"], ["stages.0"], ["stages.1"], ["stages.2"], ["stages.3", "head.norm"]], True),
    "hf_bert": (hf_bert, ["classifier"],
                [["bert.embeddings"], ["bert.encoder.layer.0"], ["bert.encoder.layer.1"],
                 ["bert.encoder.layer.2", "bert.pooler"]], True),
    "text_transformer": (lambda: TextTransformer(vocab_size=50, max_len=16, depth=3), ["classifier"],
                         [["embeddings"], ["encoder.layers.0"], ["encoder.layers.1"],
                          ["encoder.layers.2", "encoder.norm", "pooler"]], True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_head_and_blocks(case):
    build, head, blocks, recognised = CASES[case]
    model = build()
    parts = model_parts(model)
    assert list(parts.head) == head
    assert [list(b) for b in parts.blocks] == blocks
    assert parts.recognised == recognised
    # every name selects something, and head + blocks hold each parameter once (all of them when recognised)
    params = [n for n, _ in model.named_parameters()]
    owner: dict[str, str] = {}
    for name in [*head, *(n for b in blocks for n in b)]:
        hit = [p for p in params if p == name or p.startswith(name + ".")]
        assert hit, name
        for p in hit:
            assert p not in owner, (p, owner.get(p), name)
            owner[p] = name
    assert set(owner) == set(params)


def test_a_head_container_is_its_last_layer_so_its_pretrained_layers_load():
    """vgg's classifier is Linear-ReLU-Dropout-Linear-ReLU-Dropout-Linear: only the last one is the new head."""
    model = tv_vgg11()
    plan = tp.plan_weights(model, tv_vgg11().state_dict(), exclude=["@head"])
    assert plan.plan.excluded == ["classifier.6.weight", "classifier.6.bias"]


def test_timm_distilled_model_has_two_heads():
    parts = model_parts(timm_model("deit_tiny_distilled_patch16_224", num_classes=5, depth=2))
    assert parts.head == ("head", "head_dist") and parts.blocks[0][0] == "cls_token"


def test_parts_are_found_on_the_meta_device():
    with torch.device("meta"):
        model = tv_resnet18()
    assert model_parts(model) == model_parts(tv_resnet18())


# --- errors ------------------------------------------------------------------------------------------

def test_an_unknown_part_says_which_it_meant():
    with pytest.raises(UserError, match=r"freeze\.trainable\[0\]: '@heads' is not a model part\. Did you mean @head\?"):
        expand_freeze(tp_freeze(trainable=["@heads"]), model_parts(DigitsCNN()))


def test_a_block_index_past_the_end_names_the_block_count():
    parts = model_parts(DigitsCNN(widths=[16, 32, 48, 64]))  # stem, block1, block2, block3
    message = (r"freeze\.schedule\[0\]\.unfreeze\[0\]: '@blocks\.9': DigitsCNN has 4 block\(s\) "
               r"\(stem, block1, block2, block3\), so N in @blocks\.N goes from 0 to 3")
    with pytest.raises(UserError, match=message):
        expand_freeze(tp_freeze(schedule=[{"epoch": 1, "unfreeze": ["@blocks.9"]}]), parts)
    assert expand_freeze(tp_freeze(until="@blocks.-4"), parts).until == "stem"


@pytest.mark.parametrize("build", [lambda: timm_model("resnet18", num_classes=0),
                                   lambda: nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8))])
def test_a_model_without_a_head_says_how_to_name_it(build):
    parts = model_parts(build())
    assert parts.head == () and parts.no_head
    with pytest.raises(UserError, match=r"mapping\.exclude\[0\]: '@head': .* Name the classifier yourself instead of "
                                        r"@head, e.g\. mapping\.exclude=\[fc\]"):
        expand_mapping(tp_mapping(exclude=["@head"]), parts)
    assert expand_mapping(tp_mapping(exclude=["0"]), parts).exclude == ["0"]  # no @head used: no error


# --- expansion into the config ----------------------------------------------------------------------

def tp_freeze(**kw):
    from transfer_pipeline.schema.options import build_node
    from transfer_pipeline.schema import FreezeConfig

    return build_node(FreezeConfig, kw, "freeze.")


def tp_mapping(**kw):
    from transfer_pipeline.schema.options import load_options

    return load_options(**kw)[0]


def test_every_selector_field_is_expanded(compose):
    cfg = compose("freeze.until=@blocks.-2", "freeze.frozen=[@blocks.0]",  # Hydra takes @ unquoted
                  "freeze.bn_overrides=[{params: [@blocks.0], mode: train}]",
                  "optim.groups=[{params: [@blocks.-1, layer3], lr_mult: 0.1}]", 'optim.no_decay=[bias, "@head"]')
    assert uses_parts(cfg.mapping, cfg.freeze, cfg.optim)
    parts = model_parts(tv_resnet18())
    mapping, freeze = expand_mapping(cfg.mapping, parts), expand_freeze(cfg.freeze, parts)
    optim = expand_optim(cfg.optim, parts)
    assert mapping.exclude == ["fc"] and mapping.expect.missing == ["fc"]
    assert freeze.trainable == ["fc"] and freeze.frozen == ["conv1", "bn1"] and freeze.until == "layer3"
    assert freeze.schedule[0].unfreeze == ["layer4"]
    assert freeze.blocks == [*RESNET_BLOCKS, ["fc"]]  # unset + recognised stages: @blocks and the head
    assert optim.groups[0].params == ["layer4", "layer3"] and optim.groups[0].name == "layer4"
    assert optim.no_decay == ["bias", "fc"]
    assert not uses_parts(mapping, freeze, optim)
    # the BN override of a block of several modules stays one selector, which reaches bn1 and not conv1
    assert resolve_bn_modes(tv_resnet18(), freeze)["bn1"] == "train"
    # the stages see names only: the config as the recipe hands it over plans as with written-out names
    plan = plan_freezing(tv_resnet18(), freeze, epochs=6)
    assert {n.split(".")[0] for n in plan.trainable} == {"fc"}
    assert plan.events[0].selectors == ("layer4",) and {n.split(".")[0] for n in plan.events[0].names} == {"layer4"}


def test_the_digits_groups_expand_to_the_names_they_used_to_spell(compose):
    """The default experiment's files say @head / @blocks.-1 now; for the digits CNN that is head / block2."""
    cfg = compose()
    parts = model_parts(DigitsCNN())
    mapping, freeze = expand_mapping(cfg.mapping, parts), expand_freeze(cfg.freeze, parts)
    assert mapping.exclude == ["head"] and mapping.expect.missing == ["head"]
    assert freeze.trainable == ["head"] and freeze.schedule[0].unfreeze == ["block2"]
    assert freeze.blocks is None  # top-level modules, as before
    assert expand_freeze(compose("freeze=last_block").freeze, parts).until == "block1"
    assert expand_freeze(compose("freeze=linear_probe").freeze, parts).trainable == ["head"]


def test_freeze_blocks_takes_parts(compose):
    parts = model_parts(tv_resnet18())
    cfg = compose("freeze.blocks=[@blocks.0, [layer1, layer2], @blocks.3, [@blocks.-1, @head]]")
    freeze = expand_freeze(cfg.freeze, parts)
    assert freeze.blocks == [["conv1", "bn1"], ["layer1", "layer2"], ["layer3"], ["layer4", "fc"]]
    everything = expand_freeze(compose("freeze.blocks=[@blocks]").freeze, parts)
    assert everything.blocks == RESNET_BLOCKS


def test_gradual_unfreezes_a_resnet_stage_by_stage(compose):
    cfg = compose("freeze=gradual")
    model = tv_resnet18()
    plan = plan_freezing(model, expand_freeze(cfg.freeze, model_parts(model)), epochs=6)
    assert [(e.trigger.epoch, e.selectors) for e in plan.events] == [
        (1, ("layer4",)), (2, ("layer3",)), (3, ("layer2",)), (4, ("layer1",)), (5, ("conv1", "bn1"))]


# --- the Python API ---------------------------------------------------------------------------------

def test_the_api_expands_parts_with_the_model_it_is_given():
    model = tv_resnet18()
    report = tp.load_weights(model, tv_resnet18().state_dict(), exclude=["@head"], expect={"missing": ["@head"]})
    assert report.plan.excluded == ["fc.weight", "fc.bias"]
    plan = tp.freeze(model, trainable=["@head", "@blocks.-1"])
    assert {n.split(".")[0] for n in plan.trainable} == {"fc", "layer4"}
    groups = tp.param_groups(model, lr=1.0, layer_decay=0.5)  # blocks: the stages and the head
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["fc"] == 1.0 and lrs["layer4"] == 0.5 and lrs["conv1+bn1"] == 0.5 ** 5
    groups = tp.param_groups(model, lr=1.0, groups=[{"params": ["@head"], "lr": 0.1}])
    assert {g["name"]: g["lr"] for g in groups}["fc"] == 0.1


# --- the plan line and summary.json ------------------------------------------------------------------

def test_the_plan_prints_and_records_the_parts(run_pipeline, caplog):
    with caplog.at_level(logging.INFO, logger="transfer_pipeline"):
        summary, _ = run_pipeline("mode=plan")
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Model parts"))
    assert line.startswith("Model parts of DigitsCNN: @head = head (") and "@blocks = stem, block1, block2" in line
    assert summary["model_parts"]["head"] == ["head"]
    assert summary["model_parts"]["blocks"] == [["stem"], ["block1"], ["block2"]]
    # the default groups' selectors, expanded: the same names the digits CNN's groups always had
    assert [g["selectors"] for g in summary["param_groups"]] == [["block2"], ["*"]]
