"""mapping.suggest: rules written from the module tree reproduce known mappings exactly, and say 'ambiguous'."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers import read_json
from torch import nn

from transfer_pipeline.errors import UserError
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


def test_mode_plan_writes_suggested_rules_that_run_py_uses_as_is(run_pipeline, tmp_path, no_tensor_reads):
    run_dir = tmp_path / "run"
    with pytest.raises(UserError, match="loaded nothing"):  # still an error: the suggestion says what to do
        run_pipeline("experiment=renamed_layers", "mapping.rules=[]", "mode=plan")
    summary = read_json(run_dir / "summary.json")
    text = (run_dir / "suggested_rules.yaml").read_text()
    assert summary["suggested_rules"] == 2 and summary["suggested_loads"] == 8
    assert "mapping:\n  rules:\n    - from: 'features\\.(\\d+)\\.(\\w+)'\n      to: 'backbone.\\1.\\2'" in text
    again, again_dir = run_pipeline("experiment=renamed_layers", "mapping.rules=[]", "mode=plan",
                                    f"mapping.rules_file={run_dir / 'suggested_rules.yaml'}", run_dir=tmp_path / "b")
    assert again["loaded_fraction"] == 1.0
    assert not (again_dir / "suggested_rules.yaml").exists()  # nothing left unmatched: nothing to suggest


def test_suggest_is_on_in_plan_mode_only_unless_asked(run_pipeline, tmp_path):
    base = ("experiment=renamed_layers", "mapping.rules=[]", "trainer.epochs=1")
    with pytest.raises(UserError, match="loaded nothing"):
        run_pipeline(*base, "mode=plan", "mapping.suggest=false", run_dir=tmp_path / "a")
    assert not (tmp_path / "a" / "suggested_rules.yaml").exists()
    with pytest.raises(UserError):  # nothing loads: the run fails, the suggestion is there for the next one
        run_pipeline(*base, "mapping.suggest=true", run_dir=tmp_path / "b")
    assert (tmp_path / "b" / "suggested_rules.yaml").is_file()
    assert read_json(tmp_path / "b" / "summary.json")["status"] == "failed"


def test_a_shape_mismatch_error_still_leaves_the_suggestion(run_pipeline, tmp_path):
    with pytest.raises(UserError, match=r"mapping.on_mismatch=error"):
        run_pipeline("experiment=legacy_mobilenet", "mode=plan", "mapping.on_mismatch=error")
    assert "features.\\1.conv.1.0.\\2" in (tmp_path / "run" / "suggested_rules.yaml").read_text()


def test_rules_file_errors_name_the_key(run_pipeline, tmp_path):
    with pytest.raises(UserError, match=r"mapping.rules_file"):
        run_pipeline("mode=plan", f"mapping.rules_file={tmp_path / 'none.yaml'}", run_dir=tmp_path / "a")
    (tmp_path / "bad.yaml").write_text("mapping:\n  rules: 3\n")
    with pytest.raises(UserError, match=r"mapping.rules_file: .* holds no list of rules"):
        run_pipeline("mode=plan", f"mapping.rules_file={tmp_path / 'bad.yaml'}", run_dir=tmp_path / "b")


# --- mapping.verify through the pipeline ----------------------------------------------------------------

def test_suggested_rules_pass_mapping_verify_and_export(run_pipeline, tmp_path):
    """The issue's 'done when': the plan's suggestion, applied, loads everything loadable and passes verify."""
    with_suggestion = tmp_path / "plan"
    summary, _ = run_pipeline("experiment=legacy_mobilenet", "mode=plan", run_dir=with_suggestion)
    assert summary["suggested_rules"] == 8
    exported, run_dir = run_pipeline("experiment=legacy_mobilenet", "mode=export", "mapping.verify.enabled=true",
                                     f"mapping.rules_file={with_suggestion / 'suggested_rules.yaml'}",
                                     run_dir=tmp_path / "export")
    report = read_json(run_dir / "verify.json")
    assert exported["verified"] is True and exported["loaded_fraction"] == 1.0 and report["ok"]
    assert report["compared"] > 100 and (run_dir / "model.safetensors").is_file()


def test_a_wrong_rule_with_fitting_shapes_fails_verify_and_nothing_is_written(run_pipeline, tmp_path):
    """Two BatchNorms of a block have the same shapes; swapped, everything 'loads' and computes something else."""
    rules = tmp_path / "swapped.yaml"
    run_pipeline("experiment=legacy_mobilenet", "mode=plan", run_dir=tmp_path / "plan")
    text = (tmp_path / "plan" / "suggested_rules.yaml").read_text()
    swapped = text.replace("features.\\1.conv.0.1.\\2", "TMP").replace("features.\\1.conv.1.1.\\2",
                                                                     "features.\\1.conv.0.1.\\2").replace(
        "TMP", "features.\\1.conv.1.1.\\2")
    assert swapped != text
    rules.write_text(swapped)
    with pytest.raises(UserError, match=r"mapping.verify: FAILED: first difference at target `features\.2"):
        run_pipeline("experiment=legacy_mobilenet", "mode=export", "mapping.verify.enabled=true",
                     f"mapping.rules_file={rules}", run_dir=tmp_path / "export")
    assert not (tmp_path / "export" / "model.safetensors").exists()
    assert read_json(tmp_path / "export" / "verify.json")["ok"] is False


def test_verify_without_a_source_model_checks_every_loaded_tensor(run_pipeline, tmp_path):
    summary, run_dir = run_pipeline("mode=export", "mapping.verify.enabled=true")  # the default: a file source
    report = read_json(run_dir / "verify.json")
    assert summary["verified"] is True and report["checked"] == 18 and report["mismatched"] == []


def test_verify_in_a_training_run_takes_a_validation_batch(run_pipeline, tmp_path):
    summary, run_dir = run_pipeline("experiment=qkv_to_mha", "mapping.verify.enabled=true", "trainer.epochs=1")
    report = read_json(run_dir / "verify.json")
    assert summary["status"] == "completed" and report["ok"] and report["compared"] > 0


def test_a_checkpoint_file_is_verified_through_the_class_named_for_it(run_pipeline, tmp_path):
    """source.path is a plain state dict; mapping.verify.source_model names its architecture to run it."""
    from helpers import compose_config

    from transfer_pipeline.run.lifecycle import run
    from transfer_pipeline.models.legacy import LegacyMobileNetV2

    ckpt = tmp_path / "legacy.pt"
    torch.save({"state_dict": LegacyMobileNetV2(num_classes=10, width_mult=0.5, seed=3).state_dict()}, ckpt)
    run_pipeline("experiment=legacy_mobilenet", "mode=plan", run_dir=tmp_path / "plan")
    cfg = compose_config("experiment=legacy_mobilenet", "mode=export", "source.model=null", f"source.path={ckpt}",
                         "mapping.verify.enabled=true",
                         f"mapping.rules_file={tmp_path / 'plan' / 'suggested_rules.yaml'}")
    cfg.mapping.verify.source_model = {"_target_": "transfer_pipeline.models.legacy.LegacyMobileNetV2",
                                       "num_classes": 10, "width_mult": 0.5}
    summary = run(cfg, tmp_path / "export")
    assert summary["verified"] is True and read_json(tmp_path / "export" / "verify.json")["compared"] > 100


def test_a_bad_rule_in_a_rules_file_is_named_by_the_file_and_its_place(run_pipeline, tmp_path):
    (tmp_path / "r.yaml").write_text("mapping:\n  rules:\n    - {from: 'a(', to: b}\n")
    with pytest.raises(UserError, match=r"mapping.rules_file \(.*r.yaml\) rule \[0\]"):
        run_pipeline("mode=plan", f"mapping.rules_file={tmp_path / 'r.yaml'}")


def test_verify_source_output_picks_the_logits_of_a_source_that_returns_a_tuple(tmp_path):
    from helpers import compose_config

    from transfer_pipeline.run.lifecycle import run

    def verified(*extra: str) -> dict:
        cfg = compose_config("experiment=from_scratch", "mode=export", "mapping.verify.enabled=true",
                             "mapping.verify.input_shape=[2,1,8,8]", "source.path=null",
                             "source.model={_target_: helpers.tuple_model}", *extra)
        cfg.model = {"_target_": "helpers.tuple_model", "output": 0}
        run(cfg, tmp_path / str(len(extra)))
        return read_json(tmp_path / str(len(extra)) / "verify.json")

    unpicked = verified()
    assert unpicked["ok"] and unpicked["final_diff"] is None and "source output" in unpicked["final"]
    picked = verified("mapping.verify.source_output=0")
    assert picked["ok"] and picked["final_diff"] == 0.0
