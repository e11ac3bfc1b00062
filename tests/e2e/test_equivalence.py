"""Numerical equivalence: a load declared only in YAML (the shipped experiments) makes a differently
structured target compute what the source computes, to 1e-5.

Each test runs the real experiment config through the pipeline (`mode=export`), loads the exported
model.safetensors into a fresh target, and compares its outputs with the source model. The
pipeline seeds with cfg.seed, builds the target, then the source (source.model), so building
them in that order after `torch.manual_seed(0)` gives the source the same weights.
"""

from __future__ import annotations


import pytest
import torch
from safetensors.torch import load_file

from transfer_pipeline.errors import UserError
from transfer_pipeline.models import (BackboneNet, DigitsCNN, FeaturesNet, GPT2StyleTransformer, MHATransformer,
                                      QKVTransformer, pretrained_digits_cnn)

from helpers import read_json, run_cli

ATOL = 1e-5


def exported(run_pipeline, experiment: str, *overrides: str):
    summary, run_dir = run_pipeline(f"experiment={experiment}", "mode=export", *overrides)
    assert summary["status"] == "exported"
    return load_file(run_dir / "model.safetensors"), read_json(run_dir / "load_report.json")


def same_outputs(target: torch.nn.Module, source: torch.nn.Module, x: torch.Tensor, x_target=None) -> None:
    for train in (False, True):  # MultiheadAttention takes a fused fast path in eval mode
        target.train(train), source.train(train)
        with torch.no_grad():
            torch.testing.assert_close(target(x if x_target is None else x_target), source(x), rtol=0, atol=ATOL)


def test_separate_qkv_into_multihead_attention(run_pipeline):
    weights, report = exported(run_pipeline, "qkv_to_mha")
    assert report["missing"] == [] and report["unexpected"] == []
    fused = {e["target"]: e for e in report["entries"]}["layers.1.attn.in_proj_weight"]
    assert fused["sources"] == ["enc.1.q.weight", "enc.1.k.weight", "enc.1.v.weight"]
    assert fused["ops"] == [{"op": "concat", "dim": 0}] and fused["rule"] == 0

    torch.manual_seed(0)
    target, source = MHATransformer(num_classes=5), QKVTransformer(num_classes=5)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    target.load_state_dict(weights)
    assert not torch.equal(fresh["layers.0.attn.in_proj_weight"], weights["layers.0.attn.in_proj_weight"])
    same_outputs(target, source, torch.randn(6, 1, 8, 8))


def test_gpt2_conv1d_checkpoint_converts_to_torch_layers(run_pipeline):
    weights, report = exported(run_pipeline, "conv1d_to_mha")
    assert report["missing"] == [] and report["unexpected"] == []
    ops = {e["target"]: e["ops"][0]["op"] for e in report["entries"]}
    assert ops["layers.0.attn.in_proj_weight"] == "transpose" and ops["pos"] == "reshape"
    assert ops["layers.0.attn.in_proj_bias"] == "copy"

    torch.manual_seed(0)
    target, source = MHATransformer(num_classes=5), GPT2StyleTransformer(num_classes=5)
    target.load_state_dict(weights)
    torch.testing.assert_close(weights["layers.1.mlp.0.weight"], source.h[1].mlp.c_fc.weight.detach().T)
    same_outputs(target, source, torch.randn(6, 1, 8, 8))


def test_grey_checkpoint_into_an_rgb_model_gives_the_same_outputs(run_pipeline):
    weights, report = exported(run_pipeline, "grey_to_rgb")
    assert report["missing"] == [] and report["entries"][0]["ops"] == [{"op": "adapt_channels", "channels": 3}]
    target, source = DigitsCNN(num_classes=5, in_channels=3), pretrained_digits_cnn()
    target.load_state_dict(weights)
    x = torch.randn(6, 1, 8, 8)
    target.eval(), source.eval()
    with torch.no_grad():
        torch.testing.assert_close(target(x.expand(-1, 3, -1, -1)), source(x), rtol=0, atol=ATOL)


def test_class_subset_head_keeps_the_selected_rows(run_pipeline):
    weights, report = exported(run_pipeline, "class_subset")
    head = {e["target"]: e for e in report["entries"]}["head.bias"]
    assert head["ops"] == [{"op": "select", "dim": 0, "indices": [4, 1, 3]}]
    target, source = DigitsCNN(num_classes=3), pretrained_digits_cnn()
    target.load_state_dict(weights)
    x = torch.randn(6, 1, 8, 8)
    target.eval(), source.eval()
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x)[:, [4, 1, 3]], rtol=0, atol=ATOL)


@pytest.mark.parametrize("experiment", ["class_subset", "grey_to_rgb"])
def test_adapted_heads_and_inputs_score_like_the_source_without_training(run_pipeline, experiment, tmp_path):
    summary, run_dir = run_pipeline(f"experiment={experiment}", run_dir=tmp_path / experiment)
    assert summary["status"] == "evaluated" and summary["val_acc"] > 0.95
    assert not (run_dir / "metrics.csv").exists()


def test_auto_align_by_shape_order_computes_the_same(run_pipeline):
    weights, report = exported(run_pipeline, "auto_align")
    assert report["missing"] == [] and all(e["auto"] for e in report["entries"])
    assert report["renamed"]["layer1.bias"] == "fc1.bias"
    torch.manual_seed(0)
    target, source = BackboneNet(num_classes=5), FeaturesNet(num_classes=5)
    target.load_state_dict(weights)
    same_outputs(target, source, torch.randn(6, 1, 8, 8))


def test_shape_errors_stop_the_run_before_any_tensor_is_read(run_pipeline, tmp_path, no_tensor_reads):
    with pytest.raises(UserError, match=r"mapping\.rules\[0\] \(concat\): concatenating along dim 0 of enc\.0\.q\.weight "
                                        r"\(32, 32\), enc\.0\.k\.weight \(32, 32\), enc\.0\.v\.weight \(32, 32\) gives "
                                        r"\(96, 32\), but target layers\.0\.attn\.in_proj_weight is \(48, 16\)"):
        run_pipeline("experiment=qkv_to_mha", "+model.dim=16", "mode=export")
    assert read_json(tmp_path / "run" / "summary.json")["status"] == "failed"
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_concat_with_a_missing_part_names_it(run_pipeline, monkeypatch):
    rules = ("mapping.rules=[{from: ['enc\\.(\\d+)\\.q\\.(weight|bias)', 'enc\\.(\\d+)\\.k\\.(weight|bias)', "
             "'enc\\.(\\d+)\\.vv\\.(weight|bias)'], to: 'layers.\\1.attn.in_proj_\\2', op: concat}]")
    with pytest.raises(UserError, match=r"mapping\.rules\[0\]: concat group \\1='0', \\2='weight' has no source tensor "
                                        r"for from\[2\]"):
        run_pipeline("experiment=qkv_to_mha", rules, "mode=plan")


@pytest.mark.slow
def test_plan_from_the_command_line_shows_rules_and_the_module_tree(tmp_path):
    out = run_cli("experiment=conv1d_to_mha", "mode=plan", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "rules[3] transpose dims=[0, 1]: 2 source tensor(s) -> 2 target(s), e.g. h.0.attn.c_attn.weight -> " \
           "layers.0.attn.in_proj_weight (96, 32) (+1 more)" in out.stdout
    assert "layers  24/24   loaded (8 transpose)" in out.stdout
    entries = read_json(tmp_path / "load_report.json")["entries"]
    assert {e["target"]: e["ops"] for e in entries}["pos"] == [{"op": "reshape", "shape": [1, 8, 32]}]
    bad = run_cli("experiment=conv1d_to_mha", "mode=plan", "mapping.rules.0.op=transpos", f"hydra.run.dir={tmp_path / 'b'}")
    assert bad.returncode == 2 and "op 'transpos' is not supported" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr
