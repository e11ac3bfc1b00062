"""Unit tests for transfer_pipeline.mapping.report: load_report.json content and the terminal load plan."""

from __future__ import annotations

import json
import re

import pytest
from helpers import make_plan

from transfer_pipeline.tensor_meta import TensorMeta
from transfer_pipeline.mapping.report import format_plan, report_dict
from transfer_pipeline.tables import format_table

PUBLIC_KEYS = {"loaded", "missing", "unexpected", "mismatched", "renamed", "loaded_fraction"}
ALL_KEYS = PUBLIC_KEYS | {"source", "target", "stripped_prefix", "excluded", "rule_hits", "entries", "kept", "tied",
                          "warnings", "loaded_tensors_fraction"}


def M(*shape: int) -> TensorMeta:
    return TensorMeta(tuple(shape))


def target_cnn(num_classes: int = 10) -> dict[str, TensorMeta]:
    return {
        "stem.0.weight": M(16, 1, 3, 3),
        "stem.1.weight": M(16),
        "stem.1.bias": M(16),
        "block1.0.weight": M(32, 16, 3, 3),
        "block1.1.weight": M(32),
        "neck.0.weight": M(32, 32),
        "neck.0.bias": M(32),
        "head.weight": M(num_classes, 32),
        "head.bias": M(num_classes),
    }


@pytest.fixture
def wrapped_plan():
    """A DDP-wrapped 5-class checkpoint without a neck, loaded into a 10-class model with a neck."""
    target = target_cnn(10)
    source = {"module." + k: v for k, v in target_cnn(5).items() if not k.startswith("neck")}
    source["module.aux.weight"] = M(3)
    plan = make_plan(source, target, on_mismatch="skip")
    return plan, target


def test_report_dict_has_exactly_the_public_keys(wrapped_plan):
    plan, _ = wrapped_plan
    d = report_dict(plan, "file x.pt", "DigitsCNN")
    assert PUBLIC_KEYS <= set(d)
    assert set(d) == ALL_KEYS


def test_report_dict_values(wrapped_plan):
    plan, target = wrapped_plan
    d = report_dict(plan, "file x.pt", "DigitsCNN")
    assert d["source"] == "file x.pt"
    assert d["target"] == "DigitsCNN"
    assert d["stripped_prefix"] == "module."
    assert d["loaded"] == ["stem.0.weight", "stem.1.weight", "stem.1.bias", "block1.0.weight", "block1.1.weight"]
    assert d["missing"] == ["neck.0.weight", "neck.0.bias", "head.weight", "head.bias"]
    assert d["unexpected"] == ["module.aux.weight"]
    assert d["mismatched"] == [
        {"source": "module.head.weight", "target": "head.weight", "source_shape": [5, 32], "target_shape": [10, 32]},
        {"source": "module.head.bias", "target": "head.bias", "source_shape": [5], "target_shape": [10]},
    ]
    assert d["renamed"]["module.stem.0.weight"] == "stem.0.weight"
    assert d["excluded"] == []
    total = sum(m.numel for m in target.values())
    loaded = sum(target[n].numel for n in d["loaded"])
    assert d["loaded_fraction"] == pytest.approx(loaded / total)
    assert isinstance(d["loaded_fraction"], float)


def test_report_dict_round_trips_through_json(wrapped_plan):
    plan, _ = wrapped_plan
    d = report_dict(plan, None, "DigitsCNN")
    text = json.dumps(d, allow_nan=False)  # no tuples-of-objects, dataclasses, NaN ...
    assert json.loads(text) == d  # lists stay lists, so the round trip is exact


def test_report_dict_for_no_source():
    target = target_cnn()
    d = report_dict(make_plan({}, target), None, "DigitsCNN")
    assert d["source"] is None
    assert d["loaded"] == []
    assert d["missing"] == list(target)
    assert d["loaded_fraction"] == 0.0
    assert json.loads(json.dumps(d)) == d


def test_report_dict_with_rules_and_excludes_is_json():
    source = {"features.0.weight": M(4, 1), "layer1.weight": M(2, 4)}
    target = {"backbone.0.weight": M(4, 1), "fc1.weight": M(2, 4), "head.weight": M(3, 2)}
    plan = make_plan(source, target, [{"from": r"features\.(.*)", "to": r"backbone.\1"},
                                      {"from": r"layer1\.(.*)", "to": r"fc1.\1"}], exclude=["head"])
    d = json.loads(json.dumps(report_dict(plan, "model x", "BackboneNet")))
    assert d["renamed"] == {"features.0.weight": "backbone.0.weight", "layer1.weight": "fc1.weight"}
    assert d["excluded"] == ["head.weight"]
    assert d["rule_hits"] == [1, 1]


# --- format_plan -------------------------------------------------------------------------------------

def _row(text: str, module: str) -> str:
    (line,) = [ln for ln in text.splitlines() if re.match(rf"\s+{re.escape(module)}\s", ln)]
    return line


def test_format_plan_mentions_source_prefix_mismatches_and_unused(wrapped_plan):
    plan, target = wrapped_plan
    text = format_plan(plan, target, "file ckpt.pt", notes=["picked nested key 'state_dict'"])
    assert "file ckpt.pt" in text
    assert "picked nested key 'state_dict'" in text
    assert "  stripped prefix 'module.'" in text
    assert "mismatch head.weight: source (5, 32) vs target (10, 32)" in text
    assert "mismatch head.bias: source (5,) vs target (10,)" in text
    assert "aux.weight" in text and "module.aux.weight" not in text  # unused source tensors, as rules see them
    assert "loaded 5/9 tensors" in text


def test_format_plan_per_module_status(wrapped_plan):
    plan, target = wrapped_plan
    text = format_plan(plan, target, "file ckpt.pt")
    stem, block1, neck, head = (_row(text, m) for m in ("stem", "block1", "neck", "head"))
    assert re.search(r"\b3/3\s+loaded$", stem)
    assert re.search(r"\b2/2\s+loaded$", block1)
    assert "0/2" in neck and "fresh init" in neck and "2 not in source" in neck
    assert "0/2" in head and "fresh init" in head and "2 shape mismatch" in head


def test_format_plan_partly_loaded_and_excluded():
    target = {"head.weight": M(3, 2), "head.bias": M(3), "body.weight": M(2)}
    plan = make_plan({"head.weight": M(3, 2), "head.bias": M(3), "body.weight": M(2)}, target, exclude=["head.bias"])
    text = format_plan(plan, target, "file f")
    head = _row(text, "head")
    assert "1/2" in head and "partly loaded" in head and "1 excluded" in head
    assert re.search(r"\b1/1\s+loaded$", _row(text, "body"))


def test_format_plan_without_source_or_prefix():
    target = target_cnn()
    text = format_plan(make_plan({}, target), target, None)
    assert "no source (architecture only)" in text
    assert "stripped prefix" not in text
    assert "mismatch" not in text
    assert "loaded 0/9 tensors" in text


def test_format_plan_shows_rule_renames():
    source = {"features.0.weight": M(4, 1), "layer1.weight": M(2, 4)}
    target = {"backbone.0.weight": M(4, 1), "fc1.weight": M(2, 4)}
    plan = make_plan(source, target, [{"from": r"features\.(.*)", "to": r"backbone.\1"},
                                      {"from": r"layer1\.(.*)", "to": r"fc1.\1"}])
    text = format_plan(plan, target, "model FeaturesNet")
    assert "features.0.weight -> backbone.0.weight" in text
    assert "layer1.weight -> fc1.weight" in text


def test_format_table_aligns_columns():
    text = format_table(["a", "long header"], [["xxxxx", 1], ["y", 22]])
    lines = text.splitlines()
    assert len(lines) == 4
    assert set(lines[1].strip()) <= {"-", " "}
    # the second column starts at the same offset on every row
    starts = {ln.index(tok) for ln, tok in zip(lines[2:], ["1", "22"])}
    assert len(starts) == 1
    assert lines[0].index("long header") in starts


# --- what names and shapes alone do not tell ---------------------------------------------------------------------

class Tied(__import__("torch").nn.Module):
    """An embedding and an output layer that share one weight (as language models tie them)."""

    def __init__(self) -> None:
        import torch

        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.out = torch.nn.Linear(4, 10, bias=False)
        self.out.weight = self.embed.weight
        self.register_buffer("positions", torch.arange(10))  # filled by the constructor


def test_a_tied_weight_loaded_under_one_name_is_loaded_under_both():
    import transfer_pipeline as tp

    src = Tied()
    report = tp.load_weights(Tied(), {"embed.weight": src.embed.weight.detach()}, expect={"missing": []})
    assert report.missing == ["positions"] and report.plan.tied == {"out.weight": "embed.weight"}
    assert report.loaded_fraction == 80 / 90  # both names' elements count; the buffer's do not
    assert report.plan.kept == ["positions"]
    text = str(report)
    rows = {line.split()[0]: line for line in text.splitlines()[3:-1]}
    assert rows["out"].endswith("1/1     loaded (1 tied)") and rows["positions"].endswith("kept from the constructor")
    assert "fresh init" not in text


def test_unloaded_batchnorm_statistics_are_a_warning_in_the_plan():
    import torch

    import transfer_pipeline as tp
    from transfer_pipeline.models import DigitsCNN

    sd = {k: v for k, v in DigitsCNN().state_dict().items() if "running" not in k}  # an old export without stats
    report = tp.plan_weights(DigitsCNN(), sd)
    assert len(report.plan.warnings) == 3
    assert report.plan.warnings[0].startswith("BatchNorm stem.1: its weights load but its running statistics "
                                              "(running_mean, running_var) do not")
    assert "  warning: BatchNorm block1.1" in str(report)
    assert report.to_dict()["warnings"] == report.plan.warnings
    assert not tp.plan_weights(DigitsCNN(), DigitsCNN().state_dict()).plan.warnings
    del torch


def test_long_lists_are_shortened_on_the_terminal_and_kept_whole_in_json():
    from transfer_pipeline.mapping.report import format_plan

    n = 1152
    source = {"head.weight": M(n, 4)}
    target = {"head.weight": M(n, 4)}
    rules = [{"from": r"head\.weight", "to": "head.weight", "op": "select", "indices": list(range(n))[::-1]}]
    plan = make_plan(source, target, rules)
    text = format_plan(plan, target, "x")
    assert "indices=[1151, 1150, 1149, 1148, 1147, 1146, 1145, 1144, ... (1152 in all)]" in text
    assert max(len(line) for line in text.splitlines()) < 200
    assert len(report_dict(plan, "x", "T")["entries"][0]["ops"][0]["indices"]) == n
    many = {f"a{i}.weight": M(i + 1) for i in range(300)}
    plan = make_plan(many, {f"b{i}.weight": M(i + 1) for i in range(300)}, auto="shape_order")
    text = format_plan(plan, {f"b{i}.weight": M(i + 1) for i in range(300)}, "x")
    assert "... (+280 more pairs: load_report.json lists them all)" in text and len(plan.auto_pairs) == 300
