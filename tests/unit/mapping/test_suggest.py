"""mapping.suggest: rules written from the module tree reproduce known mappings exactly, and say 'ambiguous'.

Suggestions and mapping.verify in whole runs (mode=plan, rules files): tests/e2e/test_mapping_runs.py."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from transfer_pipeline.mapping.plan import plan_load
from transfer_pipeline.mapping.suggest import align, generalise, leaves, suggest_rules
from transfer_pipeline.schema import MappingConfig, OnMismatch, SourceConfig
from transfer_pipeline.tensor_meta import TensorMeta, meta_of

SKIP = MappingConfig(on_mismatch=OnMismatch.skip)


def suggested(source_sd, target_sd, mapping=SKIP):
    src, tgt = meta_of(source_sd), meta_of(target_sd)
    plan = plan_load(src, tgt, mapping, SourceConfig())
    got = suggest_rules(src, tgt, plan, mapping, SourceConfig())
    with_rules = plan_load(src, tgt, replace(mapping, rules=list(mapping.rules) + got.rules), SourceConfig())
    return got, {e.target: e.sources[0] for e in with_rules.entries}, with_rules


def legacy_and_torchvision():
    import torchvision

    from transfer_pipeline.models.legacy import LegacyMobileNetV2

    old = LegacyMobileNetV2(num_classes=10, width_mult=0.5, seed=0)
    torch.manual_seed(0)
    return old, torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5)


def test_mobilenet_v2_older_layout_gets_eight_rules_that_load_every_tensor_into_its_own_place():
    old, new = legacy_and_torchvision()
    got, loaded, plan = suggested(old.state_dict(), new.state_dict())
    assert len(got.rules) == 8 and not got.ambiguous and plan.missing == [] and plan.unexpected == []
    # block 1 has no expansion conv: its rules come first, literal, before the rule of blocks 2-17
    assert got.rules[0] == {"from": r"features\.1\.conv\.3\.(\w+)", "to": r"features.1.conv.1.\1"}
    assert {"from": r"features\.(\d+)\.conv\.3\.(\w+)", "to": r"features.\1.conv.1.0.\2"} in got.rules
    old_sd, new_sd = old.state_dict(), new.state_dict()
    assert all(torch.equal(new_sd[t], old_sd[s]) for t, s in loaded.items())  # same seed: every value in its place
    assert got.loaded == 300 and got.missing == []


def test_renamed_containers_give_one_rule_per_container():
    from transfer_pipeline.models.examples import BackboneNet, FeaturesNet

    got, loaded, plan = suggested(FeaturesNet().state_dict(), BackboneNet().state_dict())
    assert got.rules == [{"from": r"features\.(\d+)\.(\w+)", "to": r"backbone.\1.\2"},
                         {"from": r"layer(\d+)\.(\w+)", "to": r"fc\1.\2"}]
    assert loaded["backbone.3.weight"] == "features.3.weight" and loaded["fc2.bias"] == "layer2.bias"


def test_sequential_indices_to_named_children_and_an_extra_wrapper_level():
    seq = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16))
    named = nn.Module()
    named.conv1, named.bn1, named.conv2, named.bn2 = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 16, 3), \
        nn.BatchNorm2d(16)
    got, loaded, plan = suggested(seq.state_dict(), named.state_dict())
    assert plan.missing == [] and loaded["conv2.weight"] == "3.weight" and loaded["bn1.running_var"] == "1.running_var"
    # a wrapper inside every block (a whole-model wrapper is a prefix, which source.strip_prefixes detects)
    wrapped = {f"net.blocks.{i}.inner.fc.{w}": torch.zeros(4) for i in range(3) for w in ("weight", "bias")}
    flat = {f"net.blocks.{i}.fc.{w}": torch.zeros(4) for i in range(3) for w in ("weight", "bias")}
    got, loaded, plan = suggested(wrapped, flat)
    assert got.rules == [{"from": r"net\.blocks\.(\d+)\.inner\.fc\.(\w+)", "to": r"net.blocks.\1.fc.\2"}]
    assert loaded == {f"net.blocks.{i}.fc.{w}": f"net.blocks.{i}.inner.fc.{w}" for i in range(3) for w in ("weight", "bias")}


def test_a_missing_block_among_identical_ones_is_ambiguous_not_guessed():
    three = nn.Sequential(*[nn.Linear(8, 8) for _ in range(3)])
    two = nn.Module()
    two.a, two.b = nn.Linear(8, 8), nn.Linear(8, 8)
    got, loaded, plan = suggested(three.state_dict(), two.state_dict())
    assert got.rules == [] and loaded == {}  # which of the three is gone cannot be read from shapes
    assert len(got.ambiguous) == 3 and "source 1 [weight (8, 8), bias (8,)] could be target a or b" in got.ambiguous[1]
    assert got.ambiguous[0].endswith("could be target a (or nothing)")


def test_names_break_ties_the_shapes_leave():
    """One of four same-shaped blocks is gone; the indices the names keep say which."""
    src = {f"old.{i}.w": TensorMeta((4, 4)) for i in range(4)}
    tgt = {f"new.{i}.w": TensorMeta((4, 4)) for i in (0, 1, 3)}
    a, b = leaves(list(src), src), leaves(list(tgt), tgt)
    pairs, unsure = align(a, b)
    assert [(a[i].module, b[j].module) for i, j in pairs] == [("old.0", "new.0"), ("old.1", "new.1"),
                                                               ("old.3", "new.3")] and unsure == []


def test_fused_attention_is_left_to_op_rules():
    """Separate q/k/v projections and a fused in_proj have no module signature in common: nothing paired."""
    from transfer_pipeline.models.attention import MHATransformer, QKVTransformer

    got, loaded, plan = suggested(QKVTransformer().state_dict(), MHATransformer().state_dict())
    targets = set(loaded)
    assert not any("in_proj" in t for t in targets)  # never a guess at q, k or v
    assert all("q_proj" not in s and "k_proj" not in s and "v_proj" not in s for s in loaded.values())
    assert any("in_proj_weight" in m for m in got.missing)


def test_generalise_keeps_numbers_that_are_not_copied_literal():
    rules = [r for r, _ in generalise({"a.1.x": "b.0.x", "a.2.x": "b.1.x"})]  # an index shift: no capture can say it
    assert rules == [{"from": r"a\.1\.(\w+)", "to": r"b.0.\1"}, {"from": r"a\.2\.(\w+)", "to": r"b.1.\1"}]


def test_a_rule_that_would_take_more_than_its_pairs_is_narrowed():
    """`blocks.(\\d+)` would also move blocks.9, which already loads by name: narrowed to the values seen."""
    src = {**{f"m.blocks.{i}.w": TensorMeta((2,)) for i in (1, 2)}, "m.blocks.9.w": TensorMeta((2,))}
    tgt = {**{f"m.layers.{i}.w": TensorMeta((2,)) for i in (1, 2)}, "m.blocks.9.w": TensorMeta((2,)),
           "m.layers.9.w": TensorMeta((2,))}
    fixed = SourceConfig(strip_prefixes=[], add_prefix="")  # else the prefix step swaps m.blocks. for m.layers.
    plan = plan_load(src, tgt, SKIP, fixed)
    got = suggest_rules(src, tgt, plan, SKIP, fixed)
    assert got.rules == [{"from": r"m\.blocks\.(1|2)\.(\w+)", "to": r"m.layers.\1.\2"}]
    after = plan_load(src, tgt, replace(SKIP, rules=got.rules), fixed)
    assert {e.target: e.sources[0] for e in after.entries}["m.blocks.9.w"] == "m.blocks.9.w"
