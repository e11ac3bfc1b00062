"""Unit tests for transfer_pipeline.mapping.plan: load plans from names and shapes alone (no torch)."""

from __future__ import annotations

import math
import re

import pytest
from helpers import make_plan
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from transfer_pipeline.errors import UserError
from transfer_pipeline.mapping.plan import TensorMeta, check_expectations
from transfer_pipeline.mapping.rules import apply_rules, parse_rules
from transfer_pipeline.mapping.prefixes import detect


def M(*shape: int, dtype: str = "float32") -> TensorMeta:
    return TensorMeta(tuple(shape), dtype)


def small_cnn(num_classes: int = 5) -> dict[str, TensorMeta]:
    """A DigitsCNN-like layout: stem conv+bn, a block, a linear head."""
    return {
        "stem.0.weight": M(16, 1, 3, 3),
        "stem.1.weight": M(16),
        "stem.1.bias": M(16),
        "stem.1.running_mean": M(16),
        "stem.1.running_var": M(16),
        "block1.0.weight": M(32, 16, 3, 3),
        "block1.1.weight": M(32),
        "block1.1.bias": M(32),
        "head.weight": M(num_classes, 32),
        "head.bias": M(num_classes),
    }


def features_net() -> dict[str, TensorMeta]:
    return {
        "features.0.weight": M(16, 1, 3, 3),
        "features.0.bias": M(16),
        "features.3.weight": M(32, 16, 3, 3),
        "features.3.bias": M(32),
        "layer1.weight": M(32, 32),
        "layer1.bias": M(32),
        "layer2.weight": M(5, 32),
        "layer2.bias": M(5),
    }


def backbone_net() -> dict[str, TensorMeta]:
    return {
        "backbone.0.weight": M(16, 1, 3, 3),
        "backbone.0.bias": M(16),
        "backbone.3.weight": M(32, 16, 3, 3),
        "backbone.3.bias": M(32),
        "fc1.weight": M(32, 32),
        "fc1.bias": M(32),
        "fc2.weight": M(5, 32),
        "fc2.bias": M(5),
    }


FEATURES_TO_BACKBONE = [
    {"from": r"features\.(\d+)\.(.*)", "to": r"backbone.\1.\2"},
    {"from": r"layer1\.(.*)", "to": r"fc1.\1"},
    {"from": r"layer2\.(.*)", "to": r"fc2.\1"},
]


def numel(meta: dict[str, TensorMeta], names) -> int:
    return sum(meta[n].numel for n in names)


# --- TensorMeta -------------------------------------------------------------------------------------

def test_tensor_meta_numel():
    assert M(2, 3, 4).numel == 24
    assert M().numel == 1  # a scalar (e.g. num_batches_tracked)
    assert M(0, 5).numel == 0


# --- exact loads ------------------------------------------------------------------------------------

def test_exact_load_loads_everything_in_target_order():
    target = small_cnn()
    source = dict(reversed(list(small_cnn().items())))  # source order must not matter
    plan = make_plan(source, target)
    assert plan.loaded == list(target)
    assert plan.missing == []
    assert plan.unexpected == []
    assert plan.mismatched == []
    assert plan.renamed == {}
    assert plan.excluded == []
    assert plan.stripped_prefix == ""
    assert plan.loaded_fraction == 1.0
    for e in plan.entries:
        assert e.source == e.target
        assert e.shape == target[e.target].shape


def test_entries_carry_source_and_target_dtypes():
    source = {"w": M(2, 2, dtype="float16")}
    target = {"w": M(2, 2, dtype="float32")}
    (entry,) = make_plan(source, target).entries
    assert (entry.source_dtype, entry.target_dtype) == ("float16", "float32")


def test_loaded_fraction_is_by_elements_not_tensors():
    target = {"big": M(10, 10), "small": M(10), "other": M(90)}  # 100 + 10 + 90 = 200 elements
    source = {"big": M(10, 10)}
    plan = make_plan(source, target)
    assert plan.loaded == ["big"]
    assert plan.missing == ["small", "other"]
    assert plan.loaded_fraction == pytest.approx(100 / 200)

    plan = make_plan({"small": M(10), "other": M(90)}, target)
    assert plan.loaded_fraction == pytest.approx(100 / 200)
    plan = make_plan({"small": M(10)}, target)
    assert plan.loaded_fraction == pytest.approx(10 / 200)


def test_empty_source_loads_nothing():
    target = small_cnn()
    plan = make_plan({}, target)
    assert plan.entries == []
    assert plan.missing == list(target)
    assert plan.loaded_fraction == 0.0
    assert plan.stripped_prefix == ""


def test_empty_target_has_zero_fraction_not_division_error():
    plan = make_plan({"a": M(2)}, {})
    assert plan.loaded_fraction == 0.0
    assert plan.unexpected == ["a"]


def test_unexpected_lists_unused_source_names_in_source_order():
    target = small_cnn()
    source = {**small_cnn(), "aux.weight": M(3, 3), "head2.bias": M(5)}
    plan = make_plan(source, target)
    assert plan.unexpected == ["aux.weight", "head2.bias"]
    assert plan.loaded == list(target)


# --- rename rules -----------------------------------------------------------------------------------

def test_rename_rules_with_capture_groups():
    plan = make_plan(features_net(), backbone_net(), FEATURES_TO_BACKBONE)
    assert plan.loaded == list(backbone_net())
    assert plan.missing == []
    assert plan.unexpected == []
    assert plan.loaded_fraction == 1.0
    assert plan.renamed == {
        "features.0.weight": "backbone.0.weight",
        "features.0.bias": "backbone.0.bias",
        "features.3.weight": "backbone.3.weight",
        "features.3.bias": "backbone.3.bias",
        "layer1.weight": "fc1.weight",
        "layer1.bias": "fc1.bias",
        "layer2.weight": "fc2.weight",
        "layer2.bias": "fc2.bias",
    }
    assert plan.rule_hits == [4, 2, 2]
    by_target = {e.target: e.source for e in plan.entries}
    assert by_target["backbone.3.weight"] == "features.3.weight"
    assert by_target["fc1.bias"] == "layer1.bias"


def test_rules_leave_unmatched_names_alone():
    source = {"features.0.weight": M(16, 1, 3, 3), "head.weight": M(5, 32)}
    target = {"backbone.0.weight": M(16, 1, 3, 3), "head.weight": M(5, 32)}
    plan = make_plan(source, target, [{"from": r"features\.(.*)", "to": r"backbone.\1"}])
    assert set(plan.loaded) == {"backbone.0.weight", "head.weight"}
    assert plan.renamed == {"features.0.weight": "backbone.0.weight"}  # unchanged names are not 'renamed'


def test_first_matching_rule_wins():
    source = {"layer1.weight": M(4, 4)}
    target = {"fc1.weight": M(4, 4), "other.weight": M(4, 4)}
    rules = [
        {"from": r"layer1\.(.*)", "to": r"fc1.\1"},
        {"from": r"layer(\d)\.(.*)", "to": r"other.\2", "optional": True},
    ]
    plan = make_plan(source, target, rules)
    assert plan.renamed == {"layer1.weight": "fc1.weight"}
    assert plan.missing == ["other.weight"]
    assert plan.rule_hits == [1, 0]

    # reversed order: the other rule wins
    plan = make_plan(source, target, [dict(rules[1], optional=False), dict(rules[0], optional=True)])
    assert plan.renamed == {"layer1.weight": "other.weight"}
    assert plan.rule_hits == [1, 0]


def test_apply_rules_returns_rule_index_and_uses_fullmatch():
    rules = parse_rules([{"from": r"a\.(.*)", "to": r"x.\1"}, {"from": r"b", "to": "y"}])
    assert apply_rules("a.w", rules) == ("x.w", 0)
    assert apply_rules("b", rules) == ("y", 1)
    assert apply_rules("bb", rules) == ("bb", None)  # fullmatch: 'b' does not match 'bb'
    assert apply_rules("za.w", rules) == ("za.w", None)


def test_rule_matching_nothing_is_error_naming_close_source_names():
    rules = [{"from": r"feature\.(\d+)\.(.*)", "to": r"backbone.\1.\2"},  # typo: 'feature' vs 'features'
             {"from": r"layer1\.(.*)", "to": r"fc1.\1"}]
    with pytest.raises(UserError, match=r"mapping\.rules\[0\]: 'from: feature\\\.\(\\d\+\)") as e:
        make_plan(features_net(), backbone_net(), rules)
    msg = str(e.value)
    assert "matches no source tensor" in msg
    assert re.search(r"Closest source names: features\.\d\.\w+", msg)  # close source names are offered
    assert "optional: true" in msg


def test_rule_matching_nothing_names_close_source_names_for_plain_names():
    source = {"classifier.weight": M(5, 32), "classifier.bias": M(5), "stem.weight": M(3)}
    target = {"head.weight": M(5, 32), "head.bias": M(5), "stem.weight": M(3)}
    with pytest.raises(UserError, match=r"mapping\.rules\[0\].*Closest source names: classifier\.weight"):
        make_plan(source, target, [{"from": "classifer.weight", "to": "head.weight"}])


def test_optional_rule_matching_nothing_is_fine():
    rules = FEATURES_TO_BACKBONE + [{"from": r"aux\.(.*)", "to": r"aux_head.\1", "optional": True}]
    plan = make_plan(features_net(), backbone_net(), rules)
    assert plan.rule_hits == [4, 2, 2, 0]
    assert plan.loaded_fraction == 1.0


def test_rule_counts_hits_even_when_renamed_target_does_not_exist():
    # a rule that matches but renames into a name the target lacks: no error, source is unexpected
    plan = make_plan({"a.w": M(2)}, {"b.w": M(2)}, [{"from": r"a\.(.*)", "to": r"c.\1"}])
    assert plan.rule_hits == [1]
    assert plan.unexpected == ["a.w"]
    assert plan.missing == ["b.w"]


def test_unknown_rule_key_is_error():
    with pytest.raises(UserError, match=r"mapping\.rules\[1\]: unknown key\(s\) \['form'\]"):
        make_plan(features_net(), backbone_net(), [FEATURES_TO_BACKBONE[0], {"form": "x", "to": "y"}])


def test_rule_without_from_or_to_is_error():
    with pytest.raises(UserError, match=r"mapping\.rules\[0\]: a rule needs both 'from'"):
        parse_rules([{"from": "x"}])
    with pytest.raises(UserError, match=r"mapping\.rules\[0\]: a rule needs both 'from'"):
        parse_rules([{"to": "x"}])


def test_rule_that_is_not_a_mapping_is_error():
    with pytest.raises(UserError, match=r"mapping\.rules\[0\]: a rule is a mapping"):
        parse_rules(["features -> backbone"])


def test_rule_with_bad_regex_is_error():
    bad = r"features.(\d+"
    with pytest.raises(UserError, match=re.escape(f"mapping.rules[0].from: {bad!r} is not a valid regex")):
        parse_rules([{"from": bad, "to": "x"}])


def test_rule_with_unknown_op_is_error():
    with pytest.raises(UserError, match=r"op 'merge' is not supported; choose one of \['rename', 'concat'"):
        parse_rules([{"from": "a", "to": "b", "op": "merge"}])
    assert len(parse_rules([{"from": "a", "to": "b", "op": "rename"}])) == 1


def test_rule_template_with_missing_group_is_error():
    to = r"fc1.\2"
    with pytest.raises(UserError, match=re.escape(f"mapping.rules[0].to: {to!r} cannot be filled from 'layer1.weight'")):
        make_plan({"layer1.weight": M(2)}, {"fc1.weight": M(2)}, [{"from": r"layer1\.(.*)", "to": to}])


def test_two_sources_mapping_to_one_target_is_error():
    source = {"layer1.weight": M(32, 32), "fc1.weight": M(32, 32)}
    target = {"fc1.weight": M(32, 32)}
    with pytest.raises(UserError, match=r"'layer1\.weight' and 'fc1\.weight' both map to target 'fc1\.weight'"):
        make_plan(source, target, [{"from": r"layer1\.(.*)", "to": r"fc1.\1"}])


def test_two_sources_renamed_by_rules_to_one_target_is_error():
    source = {"features.0.weight": M(4), "features.1.weight": M(4)}
    target = {"backbone.weight": M(4)}
    with pytest.raises(UserError, match="both map to target 'backbone.weight'"):
        make_plan(source, target, [{"from": r"features\.\d+\.(.*)", "to": r"backbone.\1"}])


# --- prefixes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "model.", "ema.", "net."])
def test_single_wrapper_prefix_detected_and_stripped(prefix):
    target = small_cnn()
    source = {prefix + k: v for k, v in target.items()}
    plan = make_plan(source, target)
    assert plan.stripped_prefix == prefix
    assert plan.loaded == list(target)
    assert plan.missing == [] and plan.unexpected == []
    assert plan.loaded_fraction == 1.0
    assert {e.source for e in plan.entries} == set(source)


@pytest.mark.parametrize("prefix", ["module._orig_mod.", "ema.module.", "model.module._orig_mod."])
def test_multi_level_wrapper_prefix_detected_and_stripped(prefix):
    target = small_cnn()
    source = {prefix + k: v for k, v in target.items()}
    plan = make_plan(source, target)
    assert plan.stripped_prefix == prefix
    assert plan.loaded == list(target)


def test_detect_prefix_directly():
    target = small_cnn()
    assert detect({"module." + k: v for k, v in target.items()}, target).stripped == "module."
    assert detect(target, target).stripped == ""
    assert detect({"x.unrelated": M(1)}, target).stripped == ""


def test_prefix_detection_takes_rules_into_account():
    # only after the rules rename 'features.' to 'backbone.' does stripping 'module.' help
    source = {"module." + k: v for k, v in features_net().items()}
    plan = make_plan(source, backbone_net(), FEATURES_TO_BACKBONE)
    assert plan.stripped_prefix == "module."
    assert plan.loaded_fraction == 1.0
    assert plan.renamed["module.features.0.weight"] == "backbone.0.weight"


def test_prefix_detection_uses_shapes_not_just_names():
    # stripping 'model.' would produce names that exist in the target but with other shapes only:
    # that does not count as a better match, so nothing is stripped
    target = {"fc.weight": M(5, 32)}
    source = {"model.fc.weight": M(10, 32)}
    plan = make_plan(source, target, on_mismatch="skip")
    assert plan.stripped_prefix == ""
    assert plan.unexpected == ["model.fc.weight"]


def test_prefix_not_stripped_when_target_also_has_it():
    # the target itself has a top-level 'model' module: source names already match
    target = {"model.fc.weight": M(5, 3), "model.fc.bias": M(5)}
    plan = make_plan(dict(target), target)
    assert plan.stripped_prefix == ""
    assert plan.loaded == list(target)


def test_manual_strip_prefixes():
    target = small_cnn()
    source = {"module." + k: v for k, v in target.items()}
    plan = make_plan(source, target, strip_prefixes=["module."])
    assert plan.stripped_prefix == "module."
    assert plan.loaded_fraction == 1.0


def test_manual_strip_prefixes_empty_list_disables_detection():
    target = small_cnn()
    source = {"module." + k: v for k, v in target.items()}
    plan = make_plan(source, target, strip_prefixes=[])
    assert plan.stripped_prefix == ""
    assert plan.entries == []
    assert plan.unexpected == list(source)


def test_manual_strip_prefixes_two_level():
    target = small_cnn()
    source = {"module._orig_mod." + k: v for k, v in target.items()}
    plan = make_plan(source, target, strip_prefixes=["module._orig_mod."])
    assert plan.stripped_prefix == "module._orig_mod."
    assert plan.loaded == list(target)


def test_manual_strip_prefix_that_no_name_has_is_error():
    target = small_cnn()
    source = {"module." + k: v for k, v in target.items()}
    with pytest.raises(UserError, match=r"source\.strip_prefixes: no source name starts with 'model\.' "
                                        r"\(first names: module\.stem\.0\.weight"):
        make_plan(source, target, strip_prefixes=["model."])


# --- shapes -----------------------------------------------------------------------------------------

def test_mismatched_shape_error_names_both_shapes():
    source = small_cnn(num_classes=5)
    target = small_cnn(num_classes=10)
    with pytest.raises(UserError, match=r"mapping\.on_mismatch=error: 2 tensor\(s\)") as e:
        make_plan(source, target)
    msg = str(e.value)
    assert "head.weight: source (5, 32) vs target (10, 32)" in msg
    assert "head.bias: source (5,) vs target (10,)" in msg
    assert "on_mismatch=skip" in msg  # the fix is offered


def test_mismatched_shape_skip_reports_and_leaves_target_missing():
    source = small_cnn(num_classes=5)
    target = small_cnn(num_classes=10)
    plan = make_plan(source, target, on_mismatch="skip")
    assert plan.mismatched == [
        {"source": "head.weight", "target": "head.weight", "source_shape": [5, 32], "target_shape": [10, 32]},
        {"source": "head.bias", "target": "head.bias", "source_shape": [5], "target_shape": [10]},
    ]
    assert plan.missing == ["head.weight", "head.bias"]
    assert "head.weight" not in plan.loaded
    assert plan.unexpected == []  # the source tensor was mapped, only its shape differs
    expected = (numel(target, target) - 10 * 32 - 10) / numel(target, target)
    assert plan.loaded_fraction == pytest.approx(expected)


def test_mismatch_after_rename_reports_source_and_target_names():
    source = {"layer2.weight": M(5, 32)}
    target = {"fc2.weight": M(10, 32)}
    plan = make_plan(source, target, [{"from": r"layer2\.(.*)", "to": r"fc2.\1"}], on_mismatch="skip")
    assert plan.mismatched == [{"source": "layer2.weight", "target": "fc2.weight",
                                "source_shape": [5, 32], "target_shape": [10, 32]}]
    assert plan.missing == ["fc2.weight"]


# --- exclude ----------------------------------------------------------------------------------------

def test_exclude_keeps_targets_out_and_sources_unexpected():
    target = small_cnn()
    plan = make_plan(small_cnn(), target, exclude=["head"])
    assert plan.excluded == ["head.weight", "head.bias"]
    assert "head.weight" in plan.missing and "head.bias" in plan.missing
    assert "head.weight" not in plan.loaded
    assert plan.unexpected == ["head.weight", "head.bias"]
    assert plan.mismatched == []


def test_exclude_avoids_mismatch_error():
    plan = make_plan(small_cnn(5), small_cnn(10), exclude=["head.*"])  # on_mismatch=error by default
    assert plan.mismatched == []
    assert plan.excluded == ["head.weight", "head.bias"]


def test_exclude_selector_matching_nothing_is_error():
    with pytest.raises(UserError, match=r"mapping\.exclude: selector 'haed' matches no parameter.*head"):
        make_plan(small_cnn(), small_cnn(), exclude=["haed"])


# --- check_expectations -----------------------------------------------------------------------------

def test_expectations_nothing_loaded_is_error():
    target = small_cnn()
    source = {"other." + k: M(1) for k in target}
    plan = make_plan(source, target)
    assert plan.entries == []
    with pytest.raises(UserError, match="loaded nothing into the target") as e:
        check_expectations(plan, None, 0.0, source, target)
    assert "other.stem.0.weight" in str(e.value)  # names from both sides help find the fix
    assert "stem.0.weight" in str(e.value)


def test_expectations_nothing_loaded_without_source_is_fine():
    plan = make_plan({}, small_cnn())
    check_expectations(plan, None, 0.0, source=None)


def test_expectations_min_loaded():
    target = {"a": M(30), "b": M(70)}
    plan = make_plan({"a": M(30)}, target)
    assert plan.loaded_fraction == pytest.approx(0.3)
    check_expectations(plan, None, 0.3)  # exactly at the bar is fine
    check_expectations(plan, None, 0.25)
    with pytest.raises(UserError, match=r"min_loaded=0\.5: only 30\.0% of the target's elements were loaded.*\bb\b"):
        check_expectations(plan, None, 0.5)


def test_expectations_min_loaded_full_load():
    plan = make_plan(small_cnn(), small_cnn())
    check_expectations(plan, None, 1.0)


def test_expect_missing_exact_match_passes():
    plan = make_plan(small_cnn(), small_cnn(), exclude=["head"])
    check_expectations(plan, ["head"], 0.0)
    check_expectations(plan, ["head.weight", "head.bias"], 0.0)
    check_expectations(plan, [r"re:head\..*"], 0.0)


def test_expect_missing_empty_list_means_everything_must_load():
    full = make_plan(small_cnn(), small_cnn())
    check_expectations(full, [], 0.0)
    partial = make_plan(small_cnn(), small_cnn(), exclude=["head"])
    with pytest.raises(UserError, match=r"2 target tensor\(s\) were not loaded but are not declared missing: "
                                        r"head\.weight, head\.bias"):
        check_expectations(partial, [], 0.0)


def test_expect_missing_more_missing_than_declared_is_error():
    target = small_cnn()
    source = {k: v for k, v in small_cnn().items() if not k.startswith(("head", "block1"))}
    plan = make_plan(source, target)
    with pytest.raises(UserError, match=r"mapping\.expect\.missing: 3 target tensor\(s\) were not loaded but are not "
                                        r"declared missing: block1\.0\.weight, block1\.1\.weight, block1\.1\.bias"):
        check_expectations(plan, ["head"], 0.0)


def test_expect_missing_declared_but_loaded_is_error():
    plan = make_plan(small_cnn(), small_cnn(), exclude=["head"])
    with pytest.raises(UserError, match=r"mapping\.expect\.missing: 'block1' was expected to stay unloaded.*"
                                        r"Unloaded: head\.weight, head\.bias"):
        check_expectations(plan, ["head", "block1"], 0.0)


def test_expect_missing_selector_naming_no_parameter_is_error():
    plan = make_plan(small_cnn(), small_cnn(), exclude=["head"])
    with pytest.raises(UserError, match=r"'classifier' was expected to stay unloaded"):
        check_expectations(plan, ["head", "classifier"], 0.0)


def test_expect_missing_when_all_loaded_and_something_declared_is_error():
    plan = make_plan(small_cnn(), small_cnn())
    with pytest.raises(UserError, match=r"'head' was expected to stay unloaded.*Unloaded: none"):
        check_expectations(plan, ["head"], 0.0)


def test_expect_missing_bad_regex_is_user_error():
    plan = make_plan(small_cnn(), small_cnn(), exclude=["head"])
    with pytest.raises(UserError, match=r"mapping\.expect\.missing.*not a valid regex"):
        check_expectations(plan, ["re:head("], 0.0)


# --- properties -------------------------------------------------------------------------------------

_component = st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True)
_name = st.lists(_component, min_size=1, max_size=4).map(".".join)
_shape = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)
_meta = st.dictionaries(_name, _shape.map(TensorMeta), min_size=1, max_size=12)
_prefix = st.sampled_from(["module.", "_orig_mod.", "model.", "ema.", "net.", "module._orig_mod.", "ema.module."])


def _no_name_starts_with_prefix_component(meta, prefix):
    # a target module named like a wrapper component would make the wrapper ambiguous
    wrappers = set(prefix.rstrip(".").split("."))
    return not any(n.split(".")[0] in wrappers for n in meta)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(target=_meta, prefix=_prefix)
def test_property_wrapper_prefix_is_stripped_and_everything_loads(target, prefix):
    assume(_no_name_starts_with_prefix_component(target, prefix))
    source = {prefix + k: v for k, v in target.items()}
    plan = make_plan(source, target)
    assert plan.stripped_prefix == prefix
    assert sorted(plan.loaded) == sorted(target)
    assert plan.missing == []
    assert plan.unexpected == []
    assert plan.loaded_fraction == (1.0 if sum(m.numel for m in target.values()) else 0.0)


@settings(max_examples=80, deadline=None)
@given(target=_meta, data=st.data())
def test_property_loaded_and_missing_partition_target(target, data):
    # source: some target names with the same shape, some with another shape, plus extra names
    keep = data.draw(st.lists(st.sampled_from(sorted(target)), unique=True), label="keep")
    reshape = data.draw(st.lists(st.sampled_from(sorted(target)), unique=True), label="reshape")
    extra = data.draw(_meta, label="extra")
    source = {n: (TensorMeta(target[n].shape + (2,)) if n in reshape else target[n]) for n in keep}
    source.update({k: v for k, v in extra.items() if k not in target})
    plan = make_plan(source, target, on_mismatch="skip", strip_prefixes=[])
    loaded, missing = plan.loaded, plan.missing
    assert set(loaded).isdisjoint(missing)
    assert sorted(loaded + missing) == sorted(target)
    # every loaded tensor has identical name and shape on both sides (no rules, no prefixes)
    for e in plan.entries:
        assert e.source == e.target
        assert source[e.source].shape == target[e.target].shape
    # every mismatch is a common name with different shapes; every unused source is reported once
    assert {m["target"] for m in plan.mismatched} == {n for n in source.keys() & target.keys()
                                                      if source[n].shape != target[n].shape}
    assert sorted(plan.unexpected) == sorted(set(source) - set(target))
    total = sum(m.numel for m in target.values())
    expect = sum(target[n].numel for n in loaded) / total if total else 0.0
    assert math.isclose(plan.loaded_fraction, expect)
    assert 0.0 <= plan.loaded_fraction <= 1.0


@settings(max_examples=60, deadline=None)
@given(target=_meta)
def test_property_rename_roundtrip(target):
    """Renaming every target name under a new top-level component and a rule back loads everything."""
    assume(not any(n.split(".")[0] == "old" for n in target))
    source = {"old." + k: v for k, v in target.items()}
    plan = make_plan(source, target, [{"from": r"old\.(.*)", "to": r"\1"}], strip_prefixes=[])
    assert sorted(plan.loaded) == sorted(target)
    assert plan.renamed == {"old." + k: k for k in target}
    assert plan.rule_hits == [len(target)]
