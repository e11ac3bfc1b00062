"""The load's aids as a user meets them through run.py: the "loaded nothing" error that leads with the
suggested rules it just wrote, and mode=export verifying against a source model on a batch of the data.

The pieces one by one: tests/unit/mapping/test_suggest*.py and tests/unit/mapping/test_verify*.py.
"""

from __future__ import annotations

import shlex

import pytest
import torch
from helpers import read_json, run_cli

from transfer_pipeline.errors import UserError
from transfer_pipeline.models.legacy import LegacyMobileNetV2


@pytest.mark.slow
def test_loaded_nothing_names_the_suggested_rules_file_and_the_command_first(tmp_path):
    """Through the command line: the first line of the error names the file; the printed command loads it all."""
    out = run_cli("experiment=renamed_layers", "mapping.rules=[]", "mode=plan", f"hydra.run.dir={tmp_path / 'a'}")
    assert out.returncode == 2, out.stdout + out.stderr
    text = out.stdout + out.stderr
    error = text[text.index("error: "):]
    path = tmp_path / "a" / "suggested_rules.yaml"
    first, command = error.splitlines()[0], error.splitlines()[1].strip()
    assert "loaded nothing by name" in first and str(path) in first and "load 8 tensor(s)" in first
    assert error.index(str(path)) < error.index("Fix:") and error.index(command) < error.index("Fix:")
    args = shlex.split(command)
    assert args[:2] == ["python", "run.py"] and f"mapping.rules_file={path}" in args
    assert "mapping.rules=[]" in args and not any(a.startswith("hydra.run.dir") for a in args)
    again = run_cli(*args[2:], f"hydra.run.dir={tmp_path / 'b'}")  # as printed, in a new folder
    assert again.returncode == 0, again.stdout + again.stderr
    assert read_json(tmp_path / "b" / "summary.json")["loaded_fraction"] == 1.0


def test_loaded_nothing_without_a_suggestion_keeps_the_plain_message(run_pipeline, tmp_path):
    with pytest.raises(UserError) as e:
        run_pipeline("experiment=renamed_layers", "mapping.rules=[]", "mode=plan", "mapping.suggest=false")
    assert str(e.value).startswith("The source loaded nothing into the target") and "suggested" not in str(e.value)


def test_export_verifies_a_source_model_on_a_batch_of_the_configured_data(run_pipeline, tmp_path, caplog):
    """No mapping.verify.input_shape: mode=export reads the data (as training does) instead of asking for one."""
    from helpers import compose_config

    from transfer_pipeline.run.lifecycle import run

    ckpt = tmp_path / "legacy.pt"
    torch.save(LegacyMobileNetV2(num_classes=10, width_mult=0.5, seed=3).state_dict(), ckpt)
    run_pipeline("experiment=legacy_mobilenet", "mode=plan", run_dir=tmp_path / "plan")
    overrides = ("experiment=legacy_mobilenet", "mode=export", "source.model=null", f"source.path={ckpt}",
                 "mapping.verify.enabled=true", "mapping.verify.input_shape=null",
                 f"mapping.rules_file={tmp_path / 'plan' / 'suggested_rules.yaml'}")
    cfg = compose_config(*overrides)
    cfg.mapping.verify.source_model = {"_target_": "transfer_pipeline.models.legacy.LegacyMobileNetV2",
                                       "num_classes": 10, "width_mult": 0.5}
    with caplog.at_level("INFO", logger="transfer_pipeline"):
        summary = run(cfg, tmp_path / "export")
    report = read_json(tmp_path / "export" / "verify.json")
    assert summary["verified"] is True and report["ok"] and report["compared"] > 100
    assert (tmp_path / "export" / "model.safetensors").is_file()
    assert "first validation batch of the configured data (data: synthetic)" in caplog.text


def test_an_lstm_into_streaming_cells_through_run_py_plan_then_verified_export(run_pipeline, tmp_path):
    """tests/model_pairs.py's `lstm` pair as a user runs it: mode=plan suggests the recurrent rule, mode=export
    with it loads all 12 tensors and verify passes, the per-step cells reported as not comparable."""
    pair = ("source=none", "+source.model={_target_: model_pairs.source_of, name: lstm}", "model=custom",
            "model._target_=model_pairs.target_of", "+model.name=lstm", "freeze=none", "mapping=default")
    plan_dir = tmp_path / "plan"
    with pytest.raises(UserError, match="loaded nothing by name; the 3 suggested rule"):  # no name matches
        run_pipeline(*pair, "mode=plan", run_dir=plan_dir)
    text = (plan_dir / "suggested_rules.yaml").read_text()
    assert "lstm\\.(\\w+)_l(\\d+)" in text and "rnn.cells.\\2.\\1" in text
    assert read_json(plan_dir / "summary.json")["ambiguous_modules"] == 0
    exported, run_dir = run_pipeline(*pair, "mode=export", f"mapping.rules_file={plan_dir / 'suggested_rules.yaml'}",
                                     "mapping.verify.enabled=true", "mapping.verify.input_shape=[2,7,8]",
                                     run_dir=tmp_path / "export")
    report = read_json(run_dir / "verify.json")
    assert exported["verified"] is True and exported["loaded_fraction"] == 1.0
    assert report["ok"] and "call count" in report["not_comparable"]["rnn"] and report["final_diff"] < 1e-5
