"""The issue's five real pairs (tests/model_pairs.py): suggested rules leave only op rules to write, verify
passes each correct transfer and fails a wrong one built from it.

The pieces on their own: test_suggest*.py and test_verify*.py; through run.py: tests/e2e/test_mapping_aids_runs.py.
"""

from __future__ import annotations


import pytest
import torch
from model_pairs import PAIRS

import transfer_pipeline as tp
from transfer_pipeline.mapping.apply import describe_target, target_meta
from transfer_pipeline.mapping.plan import plan_load
from transfer_pipeline.mapping.suggest import suggest_rules
from transfer_pipeline.mapping.verify import verify_outputs
from transfer_pipeline.schema import MappingConfig, OnMismatch, SourceConfig
from transfer_pipeline.tensor_meta import meta_of


def suggested_load(pair):
    """Plan with the op rules alone, suggest, load with the suggestion: (suggestion, load report)."""
    src, tgt, info = meta_of(pair.source.state_dict()), target_meta(pair.target), describe_target(pair.target)
    given = list(pair.op_rules) + list(pair.hand_rules)
    mapping = MappingConfig(on_mismatch=OnMismatch.skip, rules=given)
    plan = plan_load(src, tgt, mapping, SourceConfig(), info)
    got = suggest_rules(src, tgt, plan, mapping, SourceConfig(), info)
    report = tp.load_weights(pair.target, pair.source, rules=given + got.rules, on_mismatch="skip")
    return got, report


@pytest.fixture(scope="module", params=sorted(PAIRS))
def loaded_pair(request):
    pair = PAIRS[request.param]()
    got, report = suggested_load(pair)
    return request.param, pair, got, report


def test_suggested_rules_load_every_target_tensor_into_its_own_place(loaded_pair):
    name, pair, got, report = loaded_pair
    assert report.plan.missing == [], (name, report.plan.missing, got.describe())
    assert not got.ambiguous, got.ambiguous
    src, tgt = pair.source.state_dict(), pair.target.state_dict()
    for e in report.plan.entries:  # the values are the source's (after the op), not just the shapes
        if e.op == "copy":
            assert torch.equal(tgt[e.target], src[e.sources[0]]), (name, e.target)


def test_verify_passes_the_correct_transfer(loaded_pair):
    name, pair, _, report = loaded_pair
    result = verify_outputs(pair.source, pair.target, report.plan, pair.inputs, source_output=pair.source_output)
    assert result.ok, result.describe()
    assert result.final_diff is not None and result.final_diff < 1e-4, result.describe()  # the whole function agrees


def _swap_same_shaped(pair, report) -> tuple[str, str]:
    """Swap two loaded same-shaped tensors that hold different values (a rule that pairs the wrong layer)."""
    state = pair.target.state_dict()
    loaded = [e.target for e in report.plan.entries if state[e.target].is_floating_point()
              and not e.target.endswith(("running_mean", "running_var"))]
    # matrices first; else norm weights (ALBERT's two LayerNorms: the swap a wrong guess would make). Not
    # biases: an LSTM's bias_ih and bias_hh are summed, so swapping them changes nothing
    candidates = [(a, b) for i, a in enumerate(loaded) for b in loaded[i + 1:] if state[a].dim() >= 2] + \
        [(a, b) for i, a in enumerate(loaded) for b in loaded[i + 1:] if a.endswith("weight") and b.endswith("weight")]
    for a, b in candidates:
        if state[a].shape == state[b].shape and not torch.equal(state[a], state[b]):
            with torch.no_grad():
                saved = state[a].clone()
                state[a].copy_(state[b]), state[b].copy_(saved)
            return a, b
    raise AssertionError("no two same-shaped weights to swap")


def test_verify_fails_a_wrong_transfer_and_names_a_module(loaded_pair):
    name, pair, got, _ = loaded_pair
    rules = list(pair.op_rules) + list(pair.hand_rules) + got.rules
    report = tp.load_weights(pair.target, pair.source, rules=rules, on_mismatch="skip")
    a, b = _swap_same_shaped(pair, report)
    result = verify_outputs(pair.source, pair.target, report.plan, pair.inputs, source_output=pair.source_output)
    assert not result.ok, (name, a, b, result.describe())
    assert result.first_difference is not None or result.final_diff is not None, result.describe()


def test_albert_alone_gets_its_op_rule_suggested_and_its_two_layernorms_listed_as_ambiguous():
    """With no rules at all: the concat hint (checked by planning) loads the fused projection, and the two
    LayerNorms that module order cannot tell apart are listed, never guessed."""
    pair = PAIRS["albert"]()
    src, tgt, info = meta_of(pair.source.state_dict()), target_meta(pair.target), describe_target(pair.target)
    mapping = MappingConfig(on_mismatch=OnMismatch.skip)
    got = suggest_rules(src, tgt, plan_load(src, tgt, mapping, SourceConfig(), info), mapping, SourceConfig(), info)
    assert len(got.ambiguous) == 2 and all("norm1" in a and "norm2" in a for a in got.ambiguous), got.ambiguous
    assert {"LayerNorm", "full_layer_layer_norm"} == {n for a in got.ambiguous for n in ("LayerNorm", "full_layer_layer_norm")
                                                       if f".{n} " in a}
    assert got.op_rules and all(r["op"] == "concat" for r in got.op_rules)
    rules = got.op_rules + list(pair.hand_rules) + got.rules  # the person's part: only the two norms
    report = tp.load_weights(pair.target, pair.source, rules=rules, on_mismatch="skip")
    assert report.plan.missing == [] and {"encoder.layers.0.self_attn.in_proj_weight",
                                          "encoder.layers.0.self_attn.in_proj_bias"} <= set(report.plan.loaded)
    result = verify_outputs(pair.source, pair.target, report.plan, pair.inputs, source_output=pair.source_output)
    assert result.ok and result.final_diff is not None and result.final_diff < 1e-4, result.describe()
