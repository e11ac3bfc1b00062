"""Unit tests for transfer_pipeline.mapping.prefixes: strip / add / swap prefixes from names and shapes alone."""

from __future__ import annotations

import pytest
from helpers import make_plan
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from transfer_pipeline.errors import UserError
from transfer_pipeline.tensor_meta import TensorMeta
from transfer_pipeline.mapping.prefixes import PrefixChoice, choose_prefixes, count_hits, detect, nothing_loaded_error, side_by_side


def M(*shape: int) -> TensorMeta:
    return TensorMeta(tuple(shape))


def cnn() -> dict[str, TensorMeta]:
    return {"stem.0.weight": M(16, 1, 3, 3), "stem.1.weight": M(16), "stem.1.bias": M(16),
            "layer1.0.conv.weight": M(32, 16, 3, 3), "layer1.0.bn.weight": M(32),
            "layer2.0.conv.weight": M(64, 32, 3, 3), "layer2.0.bn.weight": M(64)}


def under(prefix: str, meta: dict[str, TensorMeta]) -> dict[str, TensorMeta]:
    return {prefix + k: v for k, v in meta.items()}


# --- PrefixChoice ------------------------------------------------------------------------------------

def test_choice_apply_strip_add_and_swap():
    assert PrefixChoice(("module.",)).apply("module.fc.weight") == "fc.weight"
    assert PrefixChoice(("module.",)).apply("other.weight") == "other.weight"
    assert PrefixChoice((), "backbone.").apply("fc.weight") == "backbone.fc.weight"
    swap = PrefixChoice(("encoder.",), "backbone.")
    assert swap.apply("encoder.0.weight") == "backbone.0.weight"
    assert swap.apply("head.weight") == "head.weight"  # only names that had the stripped prefix move
    assert PrefixChoice(("module.", "_orig_mod.")).apply("module._orig_mod.x") == "x"
    assert swap.describe() == "prefix swap 'encoder.' -> 'backbone.' (source names -> target names)"
    assert PrefixChoice((), "b.").describe() == "added prefix 'b.' (in front of every source name)"
    assert PrefixChoice().describe() == "no prefix"


# --- detect --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "model.", "net.", "ema.", "module._orig_mod.",
                                    "model.module._orig_mod.", "a.b.c.d."])
def test_wrapper_prefix_is_stripped(prefix):
    choice = detect(under(prefix, cnn()), cnn())
    assert (choice.stripped, choice.add, choice.hits) == (prefix, "", len(cnn()))


def test_nothing_to_strip_when_names_already_match():
    assert detect(cnn(), cnn()) == PrefixChoice(hits=len(cnn()))


def test_target_only_prefix_is_added():
    target = {**under("backbone.", cnn()), "head.weight": M(5, 64)}
    choice = detect(cnn(), target)
    assert (choice.stripped, choice.add, choice.hits) == ("", "backbone.", len(cnn()))


def test_prefix_swap_encoder_to_backbone():
    source = {**under("encoder.", cnn()), "head.weight": M(10, 64)}
    target = {**under("backbone.", cnn()), "head.weight": M(5, 64)}
    choice = detect(source, target)
    assert (choice.stripped, choice.add) == ("encoder.", "backbone.")
    assert choice.hits == len(cnn())


def test_swap_of_a_wrapped_checkpoint():
    source = under("module.encoder.", cnn())
    choice = detect(source, under("backbone.", cnn()))
    assert (choice.stripped, choice.add) == ("module.encoder.", "backbone.")


def test_swap_that_explains_only_half_the_source_is_not_taken():
    # features.* and backbone.* agree in shape, but the rest of the source matches nothing:
    # re-rooting half a checkpoint is more often a coincidence than a wrapper (use rules for that)
    source = {"features.0.weight": M(16, 1, 3, 3), "features.0.bias": M(16),
              "layer1.weight": M(32, 16), "layer1.bias": M(32)}
    target = {"backbone.0.weight": M(16, 1, 3, 3), "backbone.0.bias": M(16),
              "fc1.weight": M(32, 16), "fc1.bias": M(32)}
    assert detect(source, target) == PrefixChoice(hits=0)


def test_single_layer_is_never_renamed_by_a_swap():
    # 'layer1.' -> 'fc1.' would match one tensor: that is a rename rule's job, not a prefix
    assert detect({"layer1.weight": M(32, 32)}, {"fc1.weight": M(32, 32)}) == PrefixChoice(hits=0)


def test_shapes_decide_not_names_alone():
    assert detect({"model.fc.weight": M(10, 32)}, {"fc.weight": M(5, 32)}).stripped == ""


def test_shortest_change_wins_a_tie():
    # 'module.' and 'module.a.' -> 'a.' both load everything: the shorter, plain strip is taken
    source = {"module.a.x": M(2), "module.a.y": M(3)}
    assert detect(source, {"a.x": M(2), "a.y": M(3)}).stripped == "module."


def test_partial_wrapper_still_stripped():
    # a Lightning checkpoint: model.* plus a loss module's buffer that the target lacks
    source = {**under("model.", cnn()), "loss_fn.weight": M(10)}
    choice = detect(source, cnn())
    assert choice.stripped == "model." and choice.hits == len(cnn())


def test_detect_with_rules_counts_after_the_rules():
    source = {"module.features.0.weight": M(4, 3), "module.features.0.bias": M(4)}
    target = {"backbone.0.weight": M(4, 3), "backbone.0.bias": M(4)}

    def rename(n: str) -> str:
        return n.replace("features.", "backbone.", 1) if n.startswith("features.") else n

    assert detect(source, target, rename).stripped == "module."
    assert detect(source, target, rename).hits == 2


def test_empty_inputs():
    assert detect({}, cnn()) == PrefixChoice()
    assert detect(cnn(), {}) == PrefixChoice()


def test_large_model_detection_is_fast():
    import time

    target = {f"model.layers.{i}.{m}.weight": M(64, 64) for i in range(80) for m in ("q", "k", "v", "o", "up", "down")}
    source = under("module._orig_mod.", target)
    start = time.perf_counter()
    assert detect(source, target).stripped == "module._orig_mod."
    assert time.perf_counter() - start < 5


# --- choose: manual settings -----------------------------------------------------------------------

def test_manual_strip_and_add():
    source = under("encoder.", cnn())
    choice = choose_prefixes(source, under("backbone.", cnn()), ["encoder."], "backbone.")
    assert choice.hits == len(cnn()) and choice.apply("encoder.stem.0.weight") == "backbone.stem.0.weight"


def test_manual_add_alone():
    assert choose_prefixes(cnn(), under("net.", cnn()), None, "net.").hits == len(cnn())


def test_manual_empty_strip_list_disables_detection():
    assert choose_prefixes(under("module.", cnn()), cnn(), [], None).hits == 0


def test_manual_add_prefix_no_target_has_is_error():
    with pytest.raises(UserError, match=r"source\.add_prefix: no target name starts with 'trunk\.'.*stem\.0\.weight"):
        choose_prefixes(cnn(), cnn(), None, "trunk.")


def test_manual_strip_prefix_no_source_has_is_error():
    with pytest.raises(UserError, match=r"source\.strip_prefixes: no source name starts with 'model\.'"):
        choose_prefixes(cnn(), cnn(), ["model."], None)


def test_count_hits():
    assert count_hits(under("m.", cnn()), cnn(), PrefixChoice(("m.",))) == len(cnn())
    assert count_hits(under("m.", cnn()), cnn(), PrefixChoice()) == 0


# --- through plan_load -----------------------------------------------------------------------------

def test_plan_shows_the_swap():
    source = {**under("encoder.", cnn()), "head.weight": M(10, 64)}
    target = {**under("backbone.", cnn()), "head.weight": M(5, 64)}
    plan = make_plan(source, target, on_mismatch="skip")
    assert plan.stripped_prefix == "encoder." and plan.added_prefix == "backbone."
    assert sorted(plan.loaded) == sorted(under("backbone.", cnn()))
    assert plan.renamed["encoder.stem.0.weight"] == "backbone.stem.0.weight"
    assert plan.mismatched[0]["target"] == "head.weight"


def test_plan_with_manual_add_prefix():
    plan = make_plan(cnn(), under("backbone.", cnn()), strip_prefixes=[], add_prefix="backbone.")
    assert plan.added_prefix == "backbone." and len(plan.loaded) == len(cnn())


def test_plan_strip_only_keeps_added_prefix_empty():
    plan = make_plan(under("module.", cnn()), cnn())
    assert (plan.stripped_prefix, plan.added_prefix) == ("module.", "")


# --- messages --------------------------------------------------------------------------------------

def test_side_by_side_lists_five_of_each():
    source = {f"s{i}.weight": M(i + 1) for i in range(8)}
    text = side_by_side(source, cnn())
    assert "source (8 tensors)" in text and "target (7 tensors)" in text
    assert "s4.weight (5)" in text and "s5.weight" not in text
    assert "layer1.0.bn.weight (32)" in text and "layer2.0.conv.weight" not in text
    row = next(line for line in text.splitlines() if "s0.weight" in line)
    assert "stem.0.weight (16, 1, 3, 3)" in row  # same row: side by side


def test_nothing_loaded_error_texts():
    e = nothing_loaded_error({"a.w": M(1)}, {"b.w": M(1)})
    assert "loaded nothing" in str(e) and "no prefix after prefix detection" in str(e) and "a.w (1)" in str(e)
    e = nothing_loaded_error({"w": M(2)}, {"w": M(3)}, mismatched=1)
    assert "every one has another shape" in str(e)


# --- property ----------------------------------------------------------------------------------------

_component = st.text(alphabet="abcdefgh", min_size=1, max_size=3)
_name = st.lists(_component, min_size=1, max_size=4).map(".".join)
_shape = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)
_meta = st.dictionaries(_name, _shape.map(TensorMeta), min_size=2, max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(target=_meta, wrap=st.sampled_from(["module.", "xyz.", "module._orig_mod."]),
       root=st.sampled_from(["", "trunk."]))
def test_property_wrapped_source_into_rooted_target_loads_everything(target, wrap, root):
    assume(not any(n.split(".")[0] in {"module", "xyz", "_orig_mod", "trunk"} for n in target))
    assume(not root or all("." in n for n in target))  # a swap moves modules, not bare tensor names
    source = under(wrap, target)
    rooted = under(root, target)
    choice = detect(source, rooted)
    assert choice.hits == len(target)
    assert sorted(choice.apply(n) for n in source) == sorted(rooted)


def test_load_plan_text_and_report_show_the_swap():
    from transfer_pipeline.mapping.report import format_plan, report_dict

    target = under("backbone.", cnn())
    plan = make_plan(under("encoder.", cnn()), target)
    assert "  prefix swap 'encoder.' -> 'backbone.'" in format_plan(plan, target, "file x")
    d = report_dict(plan, "file x", "Net")
    assert d["stripped_prefix"] == "encoder." and d["added_prefix"] == "backbone."
    assert "added_prefix" not in report_dict(make_plan(under("module.", cnn()), cnn()), "file x", "Net")


def test_a_hint_to_pair_by_shape_always_comes_with_plan_and_expect():
    e = nothing_loaded_error({"features.0.weight": M(4, 2)}, {"backbone.0.weight": M(4, 2)})
    msg = str(e)
    assert "mapping.auto=shape_order" in msg and "mode=plan" in msg and "mapping.expect" in msg
    e = nothing_loaded_error({"a.w": M(1)}, {"b.w": M(3)})  # no shape in common: no such hint
    assert "shape_order" not in str(e)
    e = nothing_loaded_error({"w": M(2)}, {"w": M(3)}, mismatched=1)
    assert "shape_order" not in str(e)
