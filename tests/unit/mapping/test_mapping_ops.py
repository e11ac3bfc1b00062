"""Mapping rules with tensor ops (concat, split, transpose, reshape, adapt_channels, select,
interpolate) and `mapping.auto`: plans from names and shapes alone, their errors, and properties
(round trips, plans never read tensors, random module trees load exactly what the plan says)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
from helpers import make_plan
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from transfer_pipeline.errors import UserError
from transfer_pipeline.tensor_meta import TensorMeta
from transfer_pipeline.mapping.op_kernels import apply_op
from transfer_pipeline.mapping.report import format_plan, report_dict
from transfer_pipeline.mapping.rules import parse_rules

PROPS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def M(*shape: int, dtype: str = "float32") -> TensorMeta:
    return TensorMeta(tuple(shape), dtype)


def meta(tensors: dict[str, torch.Tensor]) -> dict[str, TensorMeta]:
    return {k: TensorMeta(tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in tensors.items()}


def apply_plan(plan, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {e.target: apply_op(e.op, [tensors[s] for s in e.sources], e.args) for e in plan.entries}


QKV = [r"enc\.(\d+)\.q\.(weight|bias)", r"enc\.(\d+)\.k\.(weight|bias)", r"enc\.(\d+)\.v\.(weight|bias)"]
CONCAT = {"from": QKV, "to": r"layers.\1.attn.in_proj_\2", "op": "concat", "dim": 0}


def qkv_source(layers: int = 2, d: int = 4) -> dict[str, TensorMeta]:
    out = {}
    for i in range(layers):
        for p in "qkv":
            out[f"enc.{i}.{p}.weight"] = M(d, d)
            out[f"enc.{i}.{p}.bias"] = M(d)
    return out


def mha_target(layers: int = 2, d: int = 4) -> dict[str, TensorMeta]:
    out = {}
    for i in range(layers):
        out[f"layers.{i}.attn.in_proj_weight"] = M(3 * d, d)
        out[f"layers.{i}.attn.in_proj_bias"] = M(3 * d)
    return out


# --- concat -----------------------------------------------------------------------------------------

def test_concat_plans_fused_targets_from_the_parts_in_pattern_order():
    plan = make_plan(qkv_source(), mha_target(), [CONCAT])
    assert plan.loaded == list(mha_target()) and plan.missing == [] and plan.unexpected == []
    (entry,) = [e for e in plan.entries if e.target == "layers.1.attn.in_proj_weight"]
    assert entry.sources == ("enc.1.q.weight", "enc.1.k.weight", "enc.1.v.weight")
    assert (entry.op, dict(entry.args), entry.shape, entry.rule) == ("concat", {"dim": 0}, (12, 4), 0)
    assert plan.rule_hits == [12]
    assert plan.renamed["enc.0.k.bias"] == "layers.0.attn.in_proj_bias"
    assert plan.loaded_fraction == 1.0


def test_concat_along_dim_1():
    source = {"a.weight": M(3, 2), "b.weight": M(3, 5)}
    plan = make_plan(source, {"ab.weight": M(3, 7)},
                     [{"from": [r"a\.(weight)", r"b\.(weight)"], "to": r"ab.\1", "op": "concat", "dim": -1}])
    assert dict(plan.entries[0].args) == {"dim": 1}


def test_concat_group_missing_a_member_is_an_error_naming_it():
    source = qkv_source()
    del source["enc.1.v.weight"]
    with pytest.raises(UserError, match=r"mapping\.rules\[0\]: concat group \\1='1', \\2='weight' has no source "
                                        r"tensor for from\[2\] 'enc\\\\\.\(\\\\d\+\)\\\\\.v.*found enc\.1\.q\.weight "
                                        r"\(from\[0\]\), enc\.1\.k\.weight \(from\[1\]\)"):
        make_plan(source, mha_target(), [CONCAT])


def test_concat_patterns_must_capture_the_same_groups():
    with pytest.raises(UserError, match=r"mapping\.rules\[0\]\.from: the patterns capture \[2, 2, 1\] groups"):
        parse_rules([dict(CONCAT, **{"from": QKV[:2] + [r"enc\.\d+\.v\.(weight|bias)"]})])


def test_concat_two_sources_for_one_slot_is_an_error():
    rule = dict(CONCAT, **{"from": [r"enc\.\d+\.q\.(weight|bias)", r"enc\.\d+\.k\.(weight|bias)",
                                    r"enc\.\d+\.v\.(weight|bias)"], "to": r"layers.0.attn.in_proj_\1"})
    with pytest.raises(UserError, match=r"'enc\.0\.q\.weight' and 'enc\.1\.q\.weight' both match .* same groups"):
        make_plan(qkv_source(), mha_target(), [rule])


def test_concat_result_shape_differs_from_target_names_rule_tensors_and_shapes():
    target = mha_target(d=4)
    target["layers.0.attn.in_proj_weight"] = M(8, 4)
    with pytest.raises(UserError, match=re.escape(
            "mapping.rules[0] (concat): concatenating along dim 0 of enc.0.q.weight (4, 4), enc.0.k.weight (4, 4), "
            "enc.0.v.weight (4, 4) gives (12, 4), but target layers.0.attn.in_proj_weight is (8, 4).")):
        make_plan(qkv_source(), target, [CONCAT])


def test_concat_parts_that_differ_in_another_dim_is_an_error():
    source = {"a.w": M(3, 2), "b.w": M(4, 2)}
    with pytest.raises(UserError, match=r"mapping\.rules\[0\]\.dim: cannot concatenate a\.w \(3, 2\), b\.w \(4, 2\) "
                                        r"along dim 1: they differ in dim 0"):
        make_plan(source, {"ab.w": M(3, 4)}, [{"from": [r"a\.(w)", r"b\.(w)"], "to": r"ab.\1", "op": "concat", "dim": 1}])


def test_concat_dim_out_of_range_is_an_error():
    with pytest.raises(UserError, match=r"mapping\.rules\[0\]\.dim: dim 2 does not exist"):
        make_plan(qkv_source(1), mha_target(1), [dict(CONCAT, dim=2)])


@pytest.mark.parametrize("bad, message", [
    ({"from": r"enc\.q", "to": "x", "op": "concat"}, r"mapping\.rules\[0\]\.from: op concat takes a list of two or more"),
    ({"from": [r"a", r"b"], "to": "x"}, r"mapping\.rules\[0\]\.from: op rename takes one regex"),
    ({"from": r"a", "to": ["x", "y"], "op": "transpose"}, r"mapping\.rules\[0\]\.to: op transpose takes one target"),
    ({"from": r"a", "to": "x", "op": "split"}, r"mapping\.rules\[0\]\.to: op split takes a list of two or more"),
    ({"from": r"a", "to": "x", "op": "transpose", "sizes": [1, 2]},
     r"mapping\.rules\[0\]: key\(s\) \['sizes'\] do not apply to op 'transpose'; transpose takes \['dims'\]"),
    ({"from": r"a", "to": "x", "dim": 0}, r"key\(s\) \['dim'\] do not apply to op 'rename'; rename takes no other keys"),
    ({"from": [r"a", r"b"], "to": "x", "op": "concat", "dim": "0"}, r"mapping\.rules\[0\]\.dim: expected an integer"),
    ({"from": r"a", "to": ["x", "y"], "op": "split", "sizes": [1, 2, 3]},
     r"mapping\.rules\[0\]\.sizes: \[1, 2, 3\] has 3 sizes for 2 targets"),
    ({"from": r"a", "to": ["x", "y"], "op": "split", "sizes": [0, 2]}, r"mapping\.rules\[0\]\.sizes: every value must be >= 1"),
    ({"from": r"a", "to": "x", "op": "transpose", "dims": [0, 1, 2]}, r"mapping\.rules\[0\]\.dims: transpose swaps two dims"),
    ({"from": r"a", "to": "x", "op": "select"}, r"mapping\.rules\[0\]: op select needs `indices"),
    ({"from": r"a", "to": "x", "op": "select", "indices": [-1]}, r"mapping\.rules\[0\]\.indices: every value must be >= 0"),
    ({"from": r"a", "to": "x", "op": "interpolate", "mode": "cubic"}, r"mapping\.rules\[0\]\.mode: 'cubic' is not an"),
    ({"from": r"a", "to": "x", "op": "interpolate", "grid": "yes"}, r"mapping\.rules\[0\]\.grid: expected true or false"),
    ({"from": r"a", "to": "x", "op": "squash"}, r"op 'squash' is not supported; choose one of \['rename', 'concat'"),
    ({"from": [r"a", r"(b"], "to": "x", "op": "concat"}, r"mapping\.rules\[0\]\.from\[1\]: '\(b' is not a valid regex"),
])
def test_rule_shape_errors_name_the_key(bad, message):
    with pytest.raises(UserError, match=message):
        parse_rules([bad])


# --- split ------------------------------------------------------------------------------------------

SPLIT = {"from": r"h\.(\d+)\.qkv\.weight", "to": [r"b.\1.q.weight", r"b.\1.k.weight", r"b.\1.v.weight"],
         "op": "split", "dim": 0}


def test_split_into_equal_parts_and_given_sizes():
    plan = make_plan({"h.0.qkv.weight": M(12, 4)}, {f"b.0.{p}.weight": M(4, 4) for p in "qkv"}, [SPLIT])
    assert [(e.target, e.sources, dict(e.args)["index"]) for e in plan.entries] == [
        ("b.0.q.weight", ("h.0.qkv.weight",), 0), ("b.0.k.weight", ("h.0.qkv.weight",), 1),
        ("b.0.v.weight", ("h.0.qkv.weight",), 2)]
    assert dict(plan.entries[0].args)["sizes"] == (4, 4, 4) and plan.unexpected == []
    gqa = {"b.0.q.weight": M(8, 4), "b.0.k.weight": M(2, 4), "b.0.v.weight": M(2, 4)}  # grouped-query attention
    plan = make_plan({"h.0.qkv.weight": M(12, 4)}, gqa, [dict(SPLIT, sizes=[8, 2, 2])])
    assert [e.shape for e in plan.entries] == [(8, 4), (2, 4), (2, 4)]


def test_split_sizes_that_do_not_sum_is_an_error():
    with pytest.raises(UserError, match=re.escape("mapping.rules[0].sizes: [8, 2, 1] sum to 11, but h.0.qkv.weight "
                                                  "(12, 4) has 12 along dim 0.")):
        make_plan({"h.0.qkv.weight": M(12, 4)}, {f"b.0.{p}.weight": M(4, 4) for p in "qkv"}, [dict(SPLIT, sizes=[8, 2, 1])])


def test_split_into_unequal_parts_needs_sizes():
    with pytest.raises(UserError, match=r"has 10 along dim 0, which does not split into 3 equal parts; give `sizes:`"):
        make_plan({"h.0.qkv.weight": M(10, 4)}, {f"b.0.{p}.weight": M(4, 4) for p in "qkv"}, [SPLIT])


def test_split_part_with_another_shape_than_its_target_is_an_error():
    target = {"b.0.q.weight": M(4, 4), "b.0.k.weight": M(4, 4), "b.0.v.weight": M(4, 5)}
    with pytest.raises(UserError, match=r"mapping\.rules\[0\] \(split\): part 2 .* gives \(4, 4\), but target "
                                        r"b\.0\.v\.weight is \(4, 5\)"):
        make_plan({"h.0.qkv.weight": M(12, 4)}, target, [SPLIT])


# --- transpose, reshape -----------------------------------------------------------------------------

def test_transpose_conv1d_weights_and_rename_biases():
    source = {"h.0.c_fc.weight": M(8, 32), "h.0.c_fc.bias": M(32)}
    target = {"blocks.0.fc1.weight": M(32, 8), "blocks.0.fc1.bias": M(32)}
    rules = [{"from": r"h\.(\d+)\.c_fc\.weight", "to": r"blocks.\1.fc1.weight", "op": "transpose"},
             {"from": r"h\.(\d+)\.c_fc\.bias", "to": r"blocks.\1.fc1.bias"}]
    plan = make_plan(source, target, rules)
    assert [(e.op, e.rule) for e in plan.entries] == [("transpose", 0), ("copy", 1)]
    assert dict(plan.entries[0].args) == {"dims": (0, 1)}


def test_transpose_of_a_bias_is_an_error():
    with pytest.raises(UserError, match=r"mapping\.rules\[0\] \(transpose\): c\.bias \(4,\) has fewer than 2 dims"):
        make_plan({"c.bias": M(4)}, {"l.bias": M(4)}, [{"from": r"c\.(bias)", "to": r"l.\1", "op": "transpose"}])


def test_transpose_result_shape_mismatch_names_both_shapes():
    with pytest.raises(UserError, match=re.escape("mapping.rules[0] (transpose): transposing dims 0 and 1 of c.weight "
                                                  "(8, 32) gives (32, 8), but target l.weight is (16, 8).")):
        make_plan({"c.weight": M(8, 32)}, {"l.weight": M(16, 8)},
                  [{"from": r"c\.(weight)", "to": r"l.\1", "op": "transpose"}])


def test_reshape_to_the_target_shape_and_numel_check():
    plan = make_plan({"wpe.weight": M(8, 32)}, {"pos": M(1, 8, 32)}, [{"from": r"wpe\.weight", "to": "pos", "op": "reshape"}])
    assert dict(plan.entries[0].args) == {"shape": (1, 8, 32)}
    plan = make_plan({"c.weight": M(6, 4, 1, 1)}, {"l.weight": M(6, 4)},
                     [{"from": r"c\.(weight)", "to": r"l.\1", "op": "reshape", "shape": [-1, 4]}])
    assert dict(plan.entries[0].args) == {"shape": (6, 4)}
    with pytest.raises(UserError, match=r"mapping\.rules\[0\] \(reshape\): wpe\.weight \(8, 32\) has 256 elements, "
                                        r"target pos \(1, 9, 32\) has 288"):
        make_plan({"wpe.weight": M(8, 32)}, {"pos": M(1, 9, 32)}, [{"from": r"wpe\.weight", "to": "pos", "op": "reshape"}])
    with pytest.raises(UserError, match=r"mapping\.rules\[0\]\.shape: \[8, 32\] means \(8, 32\) for wpe\.weight"):
        make_plan({"wpe.weight": M(8, 32)}, {"pos": M(1, 8, 32)},
                  [{"from": r"wpe\.weight", "to": "pos", "op": "reshape", "shape": [8, 32]}])


# --- adapt_channels, select, interpolate ------------------------------------------------------------

ADAPT = [{"from": r"stem\.0\.weight", "to": "stem.0.weight", "op": "adapt_channels"}]


def test_adapt_channels_plans_the_target_channels():
    plan = make_plan({"stem.0.weight": M(16, 3, 3, 3), "head.weight": M(5, 16)},
                     {"stem.0.weight": M(16, 1, 3, 3), "head.weight": M(5, 16)}, ADAPT)
    assert [(e.target, e.op, dict(e.args)) for e in plan.entries] == [
        ("stem.0.weight", "adapt_channels", {"channels": 1}), ("head.weight", "copy", {})]


def test_adapt_channels_only_changes_dim_1_of_a_conv_weight():
    with pytest.raises(UserError, match=r"mapping\.rules\[0\] \(adapt_channels\): adapts dim 1 \(input channels\) of a "
                                        r"conv weight \[out, in, \*kernel\]; stem\.0\.weight is \(16, 3\)"):
        make_plan({"stem.0.weight": M(16, 3)}, {"stem.0.weight": M(16, 1)}, ADAPT)
    with pytest.raises(UserError, match=r"stem\.0\.weight \(16, 3, 3, 3\) and target stem\.0\.weight \(8, 1, 3, 3\) "
                                        r"differ in dim 0; only the input channels \(dim 1\) can change"):
        make_plan({"stem.0.weight": M(16, 3, 3, 3)}, {"stem.0.weight": M(8, 1, 3, 3)}, ADAPT)


SELECT = {"from": r"head\.(weight|bias)", "to": r"head.\1", "op": "select", "indices": [4, 1, 3]}


def test_select_rows_of_a_classifier():
    plan = make_plan({"head.weight": M(5, 64), "head.bias": M(5)}, {"head.weight": M(3, 64), "head.bias": M(3)}, [SELECT])
    assert [dict(e.args) for e in plan.entries] == [{"dim": 0, "indices": (4, 1, 3)}] * 2
    assert plan.loaded == ["head.weight", "head.bias"] and plan.renamed == {}


def test_select_index_out_of_range_is_an_error():
    with pytest.raises(UserError, match=re.escape("mapping.rules[0].indices: [5] out of range for head.weight (5, 64), "
                                                  "which has 5 rows along dim 0 (valid 0..4).")):
        make_plan({"head.weight": M(5, 64)}, {"head.weight": M(3, 64)}, [dict(SELECT, indices=[4, 5, 3])])


def test_select_count_must_match_the_target_rows():
    with pytest.raises(UserError, match=r"keeping 3 rows along dim 0 of head\.weight \(5, 64\) gives \(3, 64\), but "
                                        r"target head\.weight is \(4, 64\)\. Give one index per target row \(4\)"):
        make_plan({"head.weight": M(5, 64)}, {"head.weight": M(4, 64)}, [SELECT])


def test_select_from_a_label_map_file(tmp_path):
    text = tmp_path / "subset.txt"
    text.write_text("# source index, then the class name\n4 four\n\n1 one  # comment\n3\n")
    as_json = tmp_path / "subset.json"
    as_json.write_text(json.dumps([4, 1, 3]))
    for path in (text, as_json):
        rule = {"from": r"head\.(weight|bias)", "to": r"head.\1", "op": "select", "label_map": str(path)}
        plan = make_plan({"head.weight": M(5, 64)}, {"head.weight": M(3, 64)}, [rule])
        assert dict(plan.entries[0].args)["indices"] == (4, 1, 3)
    with pytest.raises(UserError, match=r"mapping\.rules\[0\]\.label_map: no such file: .*nope\.txt"):
        parse_rules([{"from": "a", "to": "b", "op": "select", "label_map": str(tmp_path / "nope.txt")}])
    (tmp_path / "bad.txt").write_text("four\n")
    with pytest.raises(UserError, match=r"mapping\.rules\[0\]\.label_map: .*bad\.txt is not a label map"):
        parse_rules([{"from": "a", "to": "b", "op": "select", "label_map": str(tmp_path / "bad.txt")}])
    with pytest.raises(UserError, match=r"give either indices or label_map, not both"):
        parse_rules([{"from": "a", "to": "b", "op": "select", "label_map": str(text), "indices": [1]}])


POS = {"from": r"pos_embed", "to": "pos_embed", "op": "interpolate", "grid": True, "prefix_tokens": 1}


def test_interpolate_position_embedding_and_kernel():
    plan = make_plan({"pos_embed": M(1, 197, 768)}, {"pos_embed": M(1, 257, 768)}, [POS])
    assert dict(plan.entries[0].args) == {"align_corners": False, "dims": (1,), "grid": True, "mode": "bicubic",
                                          "prefix_tokens": 1, "size": (257,)}
    plan = make_plan({"c.weight": M(8, 4, 3, 3)}, {"c.weight": M(8, 4, 5, 5)},
                     [{"from": r"c\.weight", "to": "c.weight", "op": "interpolate", "mode": "bilinear"}])
    assert dict(plan.entries[0].args)["dims"] == (2, 3) and dict(plan.entries[0].args)["size"] == (5, 5)


def test_interpolate_errors():
    with pytest.raises(UserError, match=r"mapping\.rules\[0\]\.grid: pos_embed has 197 tokens and target pos_embed 200 "
                                        r"along dim 1; minus prefix_tokens=1 both must be square grids"):
        make_plan({"pos_embed": M(1, 197, 768)}, {"pos_embed": M(1, 200, 768)}, [POS])
    with pytest.raises(UserError, match=r"mapping\.rules\[0\]\.dims: pos_embed \(1, 197, 768\) and target pos_embed "
                                        r"\(1, 257, 512\) differ in dim 2, which is not resized \(dims: \[1\]\)"):
        make_plan({"pos_embed": M(1, 197, 768)}, {"pos_embed": M(1, 257, 512)}, [dict(POS, dims=[1])])
    with pytest.raises(UserError, match=r"mapping\.rules\[0\]\.mode: 'linear' resizes \(1,\) dim\(s\), here 2"):
        make_plan({"c.weight": M(8, 4, 3, 3)}, {"c.weight": M(8, 4, 5, 5)},
                  [{"from": r"c\.weight", "to": "c.weight", "op": "interpolate", "mode": "linear"}])
    with pytest.raises(UserError, match=r"prefix_tokens: only applies with grid: true"):
        make_plan({"c.weight": M(8, 4, 3, 3)}, {"c.weight": M(8, 4, 5, 5)},
                  [{"from": r"c\.weight", "to": "c.weight", "op": "interpolate", "prefix_tokens": 1}])


# --- rules in general -------------------------------------------------------------------------------

def test_op_rule_matching_nothing_is_an_error_with_close_names_unless_optional():
    with pytest.raises(UserError, match=r"mapping\.rules\[0\]: 'from: \['encoder\\\.\(\\d\+\)\\\.q.*' matches no "
                                        r"source tensor.*Closest source names: enc\.\d\.q\.weight"):
        make_plan(qkv_source(), mha_target(), [dict(CONCAT, **{"from": [p.replace("enc", "encoder") for p in QKV]})])
    plan = make_plan(qkv_source(), mha_target(), [CONCAT, dict(SPLIT, optional=True)])
    assert plan.rule_hits == [12, 0]


def test_op_rule_whose_targets_do_not_exist_is_an_error_naming_close_targets():
    with pytest.raises(UserError, match=r"mapping\.rules\[0\] \(concat\): matched 12 source tensor\(s\) .* none of its "
                                        r"targets is in the target model \(e\.g\. 'layer\.0\.attn\.in_proj_weight'\)\. "
                                        r"Closest target names: layers\.0\.attn\.in_proj_weight"):
        make_plan(qkv_source(), mha_target(), [dict(CONCAT, to=r"layer.\1.attn.in_proj_\2")])


def test_two_rules_writing_one_target_is_an_error():
    source = {"a.weight": M(4, 2), "b.weight": M(2, 4)}
    rules = [{"from": r"a\.weight", "to": "l.weight"}, {"from": r"b\.weight", "to": "l.weight", "op": "transpose"}]
    with pytest.raises(UserError, match=r"source tensors 'a\.weight' and 'b\.weight' both map to target 'l\.weight' "
                                        r"\(by mapping\.rules\[0\] and by mapping\.rules\[1\]\)"):
        make_plan(source, {"l.weight": M(4, 2)}, rules)
    source = {"l.weight": M(4, 2), "b.weight": M(2, 4)}  # a rule and a plain name match
    with pytest.raises(UserError, match=r"both map to target 'l\.weight' \(by name and by mapping\.rules\[0\]\)"):
        make_plan(source, {"l.weight": M(4, 2)}, rules[1:])


def test_first_matching_rule_wins_across_rule_kinds():
    source = {"h.0.w": M(2, 3), "h.1.w": M(2, 3)}
    target = {"l.0.w": M(3, 2), "l.1.w": M(2, 3)}
    rules = [{"from": r"h\.(0)\.w", "to": r"l.\1.w", "op": "transpose"}, {"from": r"h\.(\d)\.w", "to": r"l.\1.w"}]
    plan = make_plan(source, target, rules)
    assert [(e.target, e.op) for e in plan.entries] == [("l.0.w", "transpose"), ("l.1.w", "copy")]
    assert plan.rule_hits == [1, 1]


def test_excluded_targets_of_op_rules_are_not_loaded():
    plan = make_plan(qkv_source(), mha_target(), [CONCAT], exclude=["layers.1"])
    assert plan.loaded == ["layers.0.attn.in_proj_weight", "layers.0.attn.in_proj_bias"]
    assert plan.excluded == ["layers.1.attn.in_proj_weight", "layers.1.attn.in_proj_bias"]
    assert plan.unexpected == [n for n in qkv_source() if n.startswith("enc.1.")]


def test_op_rules_see_names_after_the_wrapper_prefix_is_stripped():
    # the prefix is detected from the tensors that match by name (op rules change shapes)
    source = {"module." + k: v for k, v in {**qkv_source(), "head.weight": M(3, 4)}.items()}
    plan = make_plan(source, {**mha_target(), "head.weight": M(3, 4)}, [CONCAT])
    assert plan.stripped_prefix == "module." and plan.missing == []
    assert plan.entries[0].sources == ("module.enc.0.q.weight", "module.enc.0.k.weight", "module.enc.0.v.weight")


def test_report_lists_ops_per_entry_and_the_plan_shows_each_rule():
    target = {**mha_target(), "head.weight": M(3, 4)}
    source = {**qkv_source(), "head.weight": M(5, 4)}
    plan = make_plan(source, target, [CONCAT, dict(SELECT, **{"from": r"head\.(weight)"})])
    d = json.loads(json.dumps(report_dict(plan, "file x", "MHA")))
    by_target = {e["target"]: e for e in d["entries"]}
    assert by_target["layers.0.attn.in_proj_bias"] == {
        "target": "layers.0.attn.in_proj_bias", "sources": ["enc.0.q.bias", "enc.0.k.bias", "enc.0.v.bias"],
        "shape": [12], "ops": [{"op": "concat", "dim": 0}], "rule": 0, "auto": False}
    assert by_target["head.weight"]["ops"] == [{"op": "select", "dim": 0, "indices": [4, 1, 3]}]
    assert d["loaded"] == list(target)
    text = format_plan(plan, target, "file x")
    assert ("rules[0] concat dim=0: 12 source tensor(s) -> 4 target(s), e.g. enc.0.q.weight + enc.0.k.weight + "
            "enc.0.v.weight -> layers.0.attn.in_proj_weight (12, 4) (+3 more)") in text
    assert "rules[1] select dim=0 indices=[4, 1, 3]: 1 source tensor(s) -> 1 target(s)" in text
    assert re.search(r"\n  layers\s+4/4\s+loaded \(4 concat\)\n", text)


def test_plan_tree_opens_modules_that_loaded_partly():
    target = {"enc.0.a.weight": M(2), "enc.0.a.bias": M(2), "enc.1.a.weight": M(2), "enc.1.b.weight": M(3),
              "head.weight": M(2)}
    source = {"enc.0.a.weight": M(2), "enc.0.a.bias": M(2), "enc.1.a.weight": M(2), "head.weight": M(2)}
    text = format_plan(make_plan(source, target), target, "file x")
    lines = text.splitlines()
    rows = [ln for ln in lines if ln.startswith("  ") and ("/" in ln)]
    assert re.search(r"^  enc\s+3/4\s+partly loaded: 1 not in source$", rows[0])
    assert re.search(r"^  ├ 0\s+2/2\s+loaded$", rows[1])  # fully loaded: collapsed
    assert re.search(r"^  └ 1\s+1/2\s+partly loaded: 1 not in source$", rows[2])
    assert re.search(r"^    ├ a\s+1/1\s+loaded$", rows[3])
    assert re.search(r"^    └ b\s+0/1\s+fresh init: 1 not in source$", rows[4])
    assert re.search(r"^  head\s+1/1\s+loaded$", rows[5])


# --- mapping.auto -----------------------------------------------------------------------------------

def features() -> dict[str, TensorMeta]:
    return {"features.0.weight": M(16, 1, 3, 3), "features.0.bias": M(16), "features.3.weight": M(32, 16, 3, 3),
            "features.3.bias": M(32), "layer1.weight": M(32, 32), "layer1.bias": M(32), "layer2.weight": M(5, 32),
            "layer2.bias": M(5)}


def backbone() -> dict[str, TensorMeta]:
    return {"backbone.0.weight": M(16, 1, 3, 3), "backbone.0.bias": M(16), "backbone.3.weight": M(32, 16, 3, 3),
            "backbone.3.bias": M(32), "fc1.weight": M(32, 32), "fc1.bias": M(32), "fc2.weight": M(5, 32),
            "fc2.bias": M(5)}


def test_auto_shape_order_pairs_by_shape_in_module_order_and_shows_every_pair():
    assert make_plan(features(), backbone()).entries == []  # off by default
    plan = make_plan(features(), backbone(), auto="shape_order")
    assert plan.auto_pairs == dict(zip(features(), backbone()))
    assert plan.loaded == list(backbone()) and plan.unexpected == [] and plan.notes == []
    assert report_dict(plan, None, "x")["entries"][3]["auto"] is True
    text = format_plan(plan, backbone(), "model FeaturesNet")
    for s, t in zip(features(), backbone()):
        assert f"    {s} -> {t} " in text
    assert re.search(r"\n  fc1\s+2/2\s+loaded \(2 auto\)\n", text)


def test_auto_refuses_ambiguous_shapes_and_says_so():
    source = features()
    source["extra.bias"] = M(32)  # now 3 source tensors of shape (32,) for 2 target tensors
    plan = make_plan(source, backbone(), auto="shape_order")
    assert "backbone.3.bias" in plan.missing and "fc1.bias" in plan.missing
    assert set(plan.unexpected) == {"features.3.bias", "layer1.bias", "extra.bias"}
    (note,) = plan.notes
    assert note.startswith("mapping.auto: not pairing shape (32,): 3 source tensor(s) (features.3.bias, layer1.bias, "
                           "extra.bias) vs 2 target tensor(s) (backbone.3.bias, fc1.bias) is ambiguous")
    assert "note: mapping.auto: not pairing shape (32,)" in format_plan(plan, backbone(), None)


def test_auto_only_pairs_what_rules_and_names_leave():
    source = {**features(), "fc2.bias": M(5)}
    source.pop("layer2.bias")
    plan = make_plan(source, backbone(), [{"from": r"layer1\.(.*)", "to": r"fc1.\1"}], auto="shape_order")
    assert plan.auto_pairs == {"features.0.weight": "backbone.0.weight", "features.0.bias": "backbone.0.bias",
                               "features.3.weight": "backbone.3.weight", "features.3.bias": "backbone.3.bias",
                               "layer2.weight": "fc2.weight"}
    assert plan.missing == []


def test_auto_unknown_value_is_an_error():
    with pytest.raises(UserError, match=r"mapping\.auto='by_shape': choose one of shape_order"):
        make_plan(features(), backbone(), auto="by_shape")


def test_mapping_auto_in_the_schema(compose):
    cfg = compose("mapping.auto=shape_order")
    assert cfg.mapping.auto.value == "shape_order"
    assert compose().mapping.auto is None


# --- properties -------------------------------------------------------------------------------------

def test_planning_never_imports_torch():
    # the whole plan from a safetensors header: sources (header), nested choice, prefixes, rules, op specs, report
    code = ("import sys; import transfer_pipeline.mapping.plan, transfer_pipeline.mapping.rules, "
            "transfer_pipeline.mapping.op_specs, transfer_pipeline.mapping.nested, transfer_pipeline.mapping.report; "
            "from transfer_pipeline.sources.safetensors_header import header_meta; from transfer_pipeline.mapping.plan import plan_load; "
            "from transfer_pipeline.files import resolve_path; "
            "meta, _ = header_meta(resolve_path('pkg://transfer_pipeline/assets/digits_cnn_0to4.safetensors')); "
            "plan = plan_load(meta, meta); assert len(plan.entries) == len(meta); "
            "assert 'torch' not in sys.modules, 'mapping imported torch'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


dims = st.integers(1, 4)


@PROPS
@given(parts=st.lists(dims, min_size=2, max_size=4), rest=st.lists(dims, min_size=1, max_size=2),
       dim=st.integers(0, 2), layers=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_concat_then_split_round_trips(parts, rest, dim, layers, seed):
    dim = min(dim, len(rest))
    g = torch.Generator().manual_seed(seed)

    def shape(size: int) -> tuple[int, ...]:
        return tuple(rest[:dim]) + (size,) + tuple(rest[dim:])

    names = [f"p{k}" for k in range(len(parts))]
    tensors = {f"blk.{i}.{n}": torch.randn(shape(s), generator=g) for i in range(layers) for n, s in zip(names, parts)}
    fused = {f"blk.{i}.fused": M(*shape(sum(parts))) for i in range(layers)}
    concat = {"from": [rf"blk\.(\d+)\.{n}" for n in names], "to": r"blk.\1.fused", "op": "concat", "dim": dim}
    plan = make_plan(meta(tensors), fused, [concat])
    assert plan.missing == [] and plan.unexpected == []
    merged = apply_plan(plan, tensors)
    assert {k: tuple(v.shape) for k, v in merged.items()} == {k: m.shape for k, m in fused.items()}

    split = {"from": r"blk\.(\d+)\.fused", "to": [rf"blk.\1.{n}" for n in names], "op": "split", "dim": dim,
             "sizes": parts}
    back_plan = make_plan(meta(merged), meta(tensors), [split])
    back = apply_plan(back_plan, merged)
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert torch.equal(back[k], v), k


@PROPS
@given(shapes=st.lists(st.tuples(dims, dims), min_size=1, max_size=5), seed=st.integers(0, 2**16))
def test_transpose_twice_round_trips(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    tensors = {f"h.{i}.c.weight": torch.randn(s, generator=g) for i, s in enumerate(shapes)}
    linear = {f"l.{i}.weight": M(b, a) for i, (a, b) in enumerate(shapes)}
    there = make_plan(meta(tensors), linear, [{"from": r"h\.(\d+)\.c\.weight", "to": r"l.\1.weight", "op": "transpose"}])
    out = apply_plan(there, tensors)
    for i, (a, b) in enumerate(shapes):
        assert torch.equal(out[f"l.{i}.weight"], tensors[f"h.{i}.c.weight"].T)
    back = apply_plan(make_plan(meta(out), meta(tensors),
                                [{"from": r"l\.(\d+)\.weight", "to": r"h.\1.c.weight", "op": "transpose"}]), out)
    assert all(torch.equal(back[k], v) for k, v in tensors.items()) and back.keys() == tensors.keys()


ident = st.text("abcdefgh", min_size=1, max_size=4)


@PROPS
@given(names=st.lists(st.tuples(ident, st.integers(0, 20), ident), min_size=1, max_size=8, unique=True),
       seed=st.integers(0, 2**16))
def test_rename_there_and_back_is_the_identity(names, seed):
    g = torch.Generator().manual_seed(seed)
    tensors = {f"{a}.{i}.{b}": torch.randn(i + 1, generator=g) for a, i, b in names}
    renamed_meta = {"new_" + k: m for k, m in meta(tensors).items()}
    there = make_plan(meta(tensors), renamed_meta, [{"from": r"([a-h]+)\.(\d+)\.([a-h]+)", "to": r"new_\1.\2.\3"}],
                      strip_prefixes=[])
    assert there.renamed == {k: "new_" + k for k in tensors} and there.missing == [] and there.unexpected == []
    moved = apply_plan(there, tensors)
    back = make_plan(meta(moved), meta(tensors), [{"from": r"new_(.*)", "to": r"\1"}], strip_prefixes=[])
    returned = apply_plan(back, moved)
    assert returned.keys() == tensors.keys() and all(torch.equal(returned[k], v) for k, v in tensors.items())


LEAVES = st.one_of(
    st.tuples(st.just("linear"), dims, dims, st.booleans()),
    st.tuples(st.just("conv"), dims, dims, st.sampled_from([1, 3])),
    st.tuples(st.just("bn"), dims),
    st.tuples(st.just("ln"), dims),
)
TREES = st.recursive(LEAVES, lambda kids: st.dictionaries(st.sampled_from(["a", "b", "blk", "0", "1", "head"]), kids,
                                                          min_size=1, max_size=3), max_leaves=6)


def build(spec) -> nn.Module:
    if isinstance(spec, dict):
        return nn.ModuleDict({k: build(v) for k, v in spec.items()})
    kind, *a = spec
    return {"linear": lambda i, o, b: nn.Linear(i, o, bias=b), "conv": lambda i, o, k: nn.Conv2d(i, o, k),
            "bn": nn.BatchNorm2d, "ln": nn.LayerNorm}[kind](*a)


class Root(nn.Module):
    def __init__(self, spec, name: str) -> None:
        super().__init__()
        self.add_module(name, build(spec))


@PROPS
@given(spec=TREES, data=st.data())
def test_random_module_trees_load_exactly_what_the_plan_says(spec, data):
    """Source: the target's tree under `old_net`, with some Linear weights stored [in, out] (Conv1D)."""
    torch.manual_seed(data.draw(st.integers(0, 2**16), "seed"))
    src_model, tgt_model = Root(spec, "old_net"), Root(spec, "net")
    linears = [n for n, m in tgt_model.named_modules() if isinstance(m, nn.Linear)]
    flipped = data.draw(st.lists(st.sampled_from(linears), unique=True) if linears else st.just([]), "flipped")
    source = {k: v.clone() for k, v in src_model.state_dict().items()}
    for n in flipped:
        key = "old_" + n + ".weight"
        source[key] = source[key].T.contiguous()
    dropped = data.draw(st.lists(st.sampled_from(sorted(source)), unique=True, max_size=2), "dropped")
    for k in dropped:
        source.pop(k)
    rules = [{"from": re.escape("old_" + n + ".weight"), "to": n + ".weight", "op": "transpose", "optional": True}
             for n in flipped]
    rules.append({"from": r"old_net\.(.*)", "to": r"net.\1", "optional": True})
    target = meta(tgt_model.state_dict())

    plan = make_plan(meta(source), target, rules, strip_prefixes=[])

    expected_loaded = [t for t in target if "old_" + t not in dropped]
    assert plan.loaded == expected_loaded
    assert plan.missing == [t for t in target if t not in expected_loaded]
    assert plan.unexpected == [] and plan.mismatched == []
    before = {k: v.clone() for k, v in tgt_model.state_dict().items()}
    reads: list[str] = []

    def get(name: str) -> torch.Tensor:
        reads.append(name)
        return source[name]

    from transfer_pipeline.mapping.apply import copy_weights

    copy_weights(tgt_model, plan, SimpleNamespace(get=get))
    assert sorted(reads) == sorted(s for e in plan.entries for s in e.sources)  # exactly what the plan names
    after = tgt_model.state_dict()
    for t in target:
        s = "old_" + t
        if t in expected_loaded:
            want = source[s].T if t.removesuffix(".weight") in flipped and t.endswith(".weight") else source[s]
            assert torch.equal(after[t], want.to(after[t].dtype)), t
        else:
            assert torch.equal(after[t], before[t]), t
