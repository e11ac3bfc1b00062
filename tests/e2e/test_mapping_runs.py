"""mapping in whole runs: the fast load path against the normal one, prefix swaps, suggested rules written by
mode=plan and used as a rules file, and mapping.verify on exported and trained models.

The same pieces one by one: tests/unit/mapping/test_loading.py and tests/unit/mapping/test_suggest.py.
"""

from __future__ import annotations

import pytest
import torch
from helpers import read_json
from safetensors.torch import load_file, save_file
from torch import nn

from transfer_pipeline.errors import UserError
from transfer_pipeline.models import DigitsCNN
from transfer_pipeline.models.digits import PRETRAINED_0TO4


# --- the fast load path through the pipeline ----------------------------------------------------------------

def test_pipeline_fast_and_normal_paths_load_the_same_and_fast_is_deterministic(run_pipeline, tmp_path):
    _, fast = run_pipeline("mode=export", run_dir=tmp_path / "fast")
    _, again = run_pipeline("mode=export", run_dir=tmp_path / "again")
    _, normal = run_pipeline("mode=export", "source.meta_init=false", run_dir=tmp_path / "normal")
    a, b, c = (load_file(d / "model.safetensors") for d in (fast, again, normal))
    sd = load_file(PRETRAINED_0TO4)
    for name in read_json(fast / "load_report.json")["loaded"]:
        assert torch.equal(a[name], sd[name]) and torch.equal(c[name], sd[name]), name
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same weights
    assert a["head.weight"].shape == c["head.weight"].shape and not torch.isnan(a["head.weight"]).any()


def test_pipeline_trains_after_a_fast_load_and_frozen_stays_bitwise(run_pipeline):
    summary, run_dir = run_pipeline("trainer.epochs=1", "freeze.schedule=[]", "trainer.limit_train_batches=3")
    final, sd = load_file(run_dir / "model.safetensors"), load_file(PRETRAINED_0TO4)
    for name in ("stem.0.weight", "block1.1.running_mean", "block2.0.weight"):
        assert torch.equal(final[name], sd[name]), name
    assert torch.equal(load_file(PRETRAINED_0TO4)["stem.0.weight"], sd["stem.0.weight"])  # the file is untouched
    assert summary["status"] == "completed"


def test_pipeline_prefix_swap_end_to_end(run_pipeline, tmp_path):
    sd = load_file(PRETRAINED_0TO4)
    path = tmp_path / "encoder.safetensors"
    save_file({f"encoder.{k}": v for k, v in sd.items() if not k.startswith("head.")}, path)
    _, run_dir = run_pipeline(f"source.path={path}", "model._target_=test_mapping_runs.backbone_digits", "mode=export",
                              "mapping.exclude=[head]", "mapping.expect.missing=[head]")
    report = read_json(run_dir / "load_report.json")
    assert report["stripped_prefix"] == "encoder." and report["added_prefix"] == "backbone."
    assert len(report["loaded"]) == 18
    assert torch.equal(load_file(run_dir / "model.safetensors")["backbone.block1.0.weight"], sd["block1.0.weight"])


class BackboneDigits(nn.Module):
    def __init__(self, num_classes: int = 5, in_channels: int = 1) -> None:
        super().__init__()
        cnn = DigitsCNN(num_classes, in_channels)
        self.backbone = nn.ModuleDict({"stem": cnn.stem, "block1": cnn.block1, "block2": cnn.block2})
        self.head = cnn.head


def backbone_digits(num_classes: int = 5, in_channels: int = 1) -> BackboneDigits:
    return BackboneDigits(num_classes, in_channels)


# --- suggested rules through the pipeline -------------------------------------------------------------------

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


# --- mapping.verify through the pipeline --------------------------------------------------------------------

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
