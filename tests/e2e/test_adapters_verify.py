"""mapping.verify with adapters (adapters=..., source.adapter) through whole runs: the load is the base's, so it is
verified with the adapters disabled and verify.json says so; a wrong load still fails. And adapters=rslora,
loha and lokr end to end: a run's adapter/ reused through source.adapter."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import compose_config, read_json
from transfer_pipeline.errors import UserError

FAST = ("trainer.epochs=1", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2")
# the source as a model to run (the shipped DigitsCNN), so verify compares outputs module by module
SOURCE_MODEL = ("source.path=null", "+source.model={_target_: transfer_pipeline.models.pretrained_digits_cnn}")
# stem.1's weight and bias have the same shape: swapped, everything loads and computes something else
SWAPPED = [{"from": r"stem\.1\.weight", "to": "stem.1.bias"}, {"from": r"stem\.1\.bias", "to": "stem.1.weight"}]


def run_with(run_dir, *overrides: str, rules=None) -> dict:
    from transfer_pipeline.run.lifecycle import run

    cfg = compose_config(*overrides)
    if rules is not None:
        cfg.mapping.rules = rules
    return run(cfg, run_dir)


@pytest.fixture(scope="module")
def verified(tmp_path_factory):
    """An adapters=lora run that verified its load against the source model: its folder and summary."""
    run_dir = tmp_path_factory.mktemp("verified")
    summary = run_with(run_dir, "adapters=lora", "adapters.rank=4", "mapping.verify.enabled=true", *SOURCE_MODEL,
                       *FAST)
    return run_dir, summary


def test_a_lora_run_verifies_the_base_load_with_the_adapters_disabled(verified, caplog):
    run_dir, summary = verified
    report = read_json(run_dir / "verify.json")
    assert summary["status"] == "completed" and summary["verified"] is True and report["ok"]
    assert report["compared"] == 9 and "stem.0" in report["max_abs_diff"]  # a layer that has an adapter
    assert report["verified_model"].startswith("the base as loaded, with the adapters disabled (adapters.method=lora "
                                               "on 3 layer(s))")
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()  # the run went on with the adapters


def test_a_swapped_load_still_fails_verify_with_adapters(tmp_path):
    with pytest.raises(UserError, match=r"mapping\.verify: FAILED: first difference at target `stem\.1`.*\n.*"
                                        r"verified: the base as loaded, with the adapters disabled"):
        run_with(tmp_path / "run", "adapters=lora", "mapping.verify.enabled=true", *SOURCE_MODEL, *FAST,
                 rules=SWAPPED)
    assert read_json(tmp_path / "run" / "verify.json")["ok"] is False
    assert not (tmp_path / "run" / "adapter").exists() and not (tmp_path / "run" / "model.safetensors").exists()


def test_without_a_source_model_the_base_tensors_are_checked_in_the_loads_names(tmp_path):
    summary = run_with(tmp_path / "run", "adapters=dora", "mapping.verify.enabled=true", *FAST)
    report = read_json(tmp_path / "run" / "verify.json")
    assert summary["verified"] is True and report["checked"] == 18 and report["mismatched"] == []
    assert "adapters.method=dora" in report["verified_model"]


@pytest.mark.parametrize("mode", ["eval", "export"])
def test_a_saved_adapter_verifies_the_base_it_goes_on(verified, tmp_path, mode):
    run_dir, trained = verified
    summary = run_with(tmp_path / mode, f"mode={mode}", f"source.adapter={run_dir / 'adapter'}",
                       "mapping.verify.enabled=true", *SOURCE_MODEL, *FAST[1:])
    report = read_json(tmp_path / mode / "verify.json")
    assert summary["verified"] is True and report["ok"] and report["compared"] == 9
    assert f"source.adapter={run_dir / 'adapter'}" in report["verified_model"]
    if mode == "eval":  # the adapter is on again after verify: the trained run's numbers
        assert summary["val_acc"] == trained["val_acc"]
    else:
        merged, own = load_file(tmp_path / mode / "model.safetensors"), load_file(run_dir / "model.safetensors")
        assert merged.keys() == own.keys() and all(torch.equal(merged[k], own[k]) for k in own)


@pytest.mark.parametrize("method", ["rslora", "loha", "lokr"])
def test_each_method_trains_saves_and_is_reused(tmp_path, method):
    summary = run_with(tmp_path / "train", f"adapters={method}", "adapters.rank=4", *FAST)
    a = summary["adapters"]
    assert summary["status"] == "completed" and a["method"] == method and a["merge_max_rel_diff"] <= 1e-4
    config = json.loads((tmp_path / "train" / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == {"rslora": "LORA", "loha": "LOHA", "lokr": "LOKR"}[method]
    assert config.get("use_rslora", False) == (method == "rslora")
    again = run_with(tmp_path / "eval", "mode=eval", f"source.adapter={tmp_path / 'train' / 'adapter'}", *FAST[1:])
    assert again["source_adapter"]["method"] == method and again["val_acc"] == summary["val_acc"]
