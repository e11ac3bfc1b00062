"""adapters=lora | dora through whole runs: the plan, training, adapter/ in peft's format, the merged
model.safetensors in the target's names, the frozen base left bitwise as loaded, and refusals."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from helpers import ROOT, read_json, run_cli
from transfer_pipeline.errors import UserError
from transfer_pipeline.models import DigitsCNN
from transfer_pipeline.models.digits import PRETRAINED_0TO4

FAST = ("trainer.epochs=2", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2")


def loaded_base(seed: int = 3) -> DigitsCNN:
    """A fresh DigitsCNN holding the loaded base (the shipped weights) and a random head of its own."""
    torch.manual_seed(seed)
    model = DigitsCNN(num_classes=5)
    model.load_state_dict({k: v for k, v in load_file(PRETRAINED_0TO4).items() if not k.startswith("head.")},
                          strict=False)
    return model.eval()


def test_lora_run_writes_adapter_and_merged_weights(run_pipeline):
    from peft import PeftModel

    summary, run_dir = run_pipeline("adapters=lora", "adapters.rank=4", *FAST)
    assert summary["status"] == "completed"
    a = summary["adapters"]
    assert a["method"] == "lora" and a["rank"] == 4 and a["targets"] == ["stem.0", "block1.0", "block2.0"]
    assert a["trainable_params"] == summary["trainable_params"] == a["adapter_params"] + 325
    assert 0 < a["trainable_fraction"] < 0.2 and a["merge_max_rel_diff"] <= 1e-4
    assert a["adapter_bytes"] == (run_dir / "adapter" / "adapter_model.safetensors").stat().st_size
    assert (run_dir / "adapter" / "adapter_config.json").is_file()

    merged = load_file(run_dir / "model.safetensors")
    plain = DigitsCNN(num_classes=5)
    assert set(merged) == set(plain.state_dict())  # the target's own names, nothing else
    assert not any("lora_" in k or "base_layer" in k or "modules_to_save" in k for k in merged)
    plain.load_state_dict(merged)
    plain.eval()
    adapter = PeftModel.from_pretrained(loaded_base(), str(run_dir / "adapter")).eval()
    x = torch.randn(32, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(adapter(x), plain(x), atol=1e-5)  # the adapter on its base = the merged weights
        assert not torch.allclose(plain.block2[0].weight, loaded_base().block2[0].weight)  # and they did train

    # the frozen base stayed bitwise as loaded: weights, BatchNorm parameters and statistics
    source, last = load_file(PRETRAINED_0TO4), load_file(run_dir / "checkpoints" / "last.safetensors")
    for k, v in source.items():
        if k.startswith("head."):
            continue
        name = k.replace(".0.weight", ".0.base_layer.weight") if k.endswith(".0.weight") else k
        assert torch.equal(last[name], v), k


def test_plan_shows_targets_and_counts_and_the_default_run_has_no_adapters(run_pipeline, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO):
        summary, run_dir = run_pipeline("adapters=lora", "mode=plan", run_dir=tmp_path / "plan")
    assert summary["status"] == "planned" and summary["adapters"]["targets"] == ["stem.0", "block1.0", "block2.0"]
    assert "Adapters: lora, rank 8, alpha 16, dropout 0, on 3 layer(s) (Conv2d x3): stem.0, block1.0, block2.0" in caplog.text
    assert "trainable 4,749 of 28,157 parameters (16.87%)" in caplog.text
    plain, _ = run_pipeline("mode=plan", run_dir=tmp_path / "plain")
    assert "adapters" not in plain and not (tmp_path / "plain" / "adapter").exists()


def test_dora_bf16_best_weights_on_chosen_targets(run_pipeline):
    summary, run_dir = run_pipeline("adapters=dora", "adapters.targets=[@blocks.-1]", "adapters.lr=0.005",
                                    "trainer.precision=bf16", "trainer.final_weights=best", *FAST)
    assert summary["status"] == "completed" and summary["adapters"]["targets"] == ["block2.0"]
    rows = {g["group"]: g for g in summary["param_groups"]}
    assert rows["adapters"]["peak_lr"] == 0.005 and rows["default"]["peak_lr"] == 0.01
    assert set(load_file(run_dir / "model.safetensors")) == set(DigitsCNN(num_classes=5).state_dict())
    assert read_json(run_dir / "adapter" / "adapter_config.json")["use_dora"] is True


def test_shipped_text_lora_experiment_trains_the_encoder_adapters(run_pipeline, tmp_path):
    """experiment=text_lora: adapters on both encoder layers' feed-forward Linears (inside nn.TransformerEncoderLayer)
    and the pooler; adapter/ loads with PeftModel.from_pretrained onto the shipped base; mode=eval with
    source.adapter reproduces the run's own validation loss (the fused eval path would have skipped them)."""
    from peft import PeftModel
    from transfer_pipeline.models import TextTransformer

    summary, run_dir = run_pipeline("experiment=text_lora", *FAST, run_dir=tmp_path / "run")
    assert summary["status"] == "completed"
    ffn = [f"encoder.layers.{i}.linear{j}" for i in range(2) for j in (1, 2)]
    assert summary["adapters"]["targets"] == ffn + ["pooler.dense"] and summary["adapters"]["head"] == ["classifier"]
    merged = load_file(run_dir / "model.safetensors")
    assert not any("lora_" in k or "base_layer" in k or "modules_to_save" in k for k in merged)
    source = load_file(ROOT / "transfer_pipeline" / "assets" / "text_transformer_sport_food.safetensors")
    assert set(merged) == set(source)
    assert not torch.equal(merged["encoder.layers.0.linear1.weight"], source["encoder.layers.0.linear1.weight"])
    assert torch.equal(merged["encoder.layers.0.self_attn.in_proj_weight"],
                       source["encoder.layers.0.self_attn.in_proj_weight"])  # no adapter there: as loaded

    import yaml

    config = {k: v for k, v in yaml.safe_load((ROOT / "conf" / "model" / "text_transformer.yaml").read_text()).items()
              if not k.startswith("_") and k != "output"}
    base, expect = TextTransformer(**config), TextTransformer(**config)
    base.load_state_dict(source)
    expect.load_state_dict(merged)
    adapter = PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()
    torch.backends.mha.set_fastpath_enabled(False)  # plain peft leaves torch's fused encoder path on (docs/adapters.md)
    ids = torch.randint(1, config["vocab_size"], (8, 12))
    ids[:, 9:] = config["pad_id"]
    with torch.no_grad():
        try:
            assert torch.allclose(adapter(ids).logits, expect.eval()(ids).logits, atol=1e-5)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)

    evaluated, _ = run_pipeline("experiment=text_lora", "mode=eval", f"source.adapter={run_dir / 'adapter'}",
                                run_dir=tmp_path / "eval")
    plain, _ = run_pipeline("experiment=text_classifier", "mode=eval", f"source.path={run_dir / 'model.safetensors'}",
                            run_dir=tmp_path / "plain")
    split = evaluated["eval_split"]
    assert evaluated[f"{split}_loss"] == pytest.approx(plain[f"{split}_loss"], rel=1e-5)  # adapter = merged weights


@pytest.mark.parametrize("overrides, message", [
    (("adapters.targets=[blok2]",), r"adapters\.targets\[0\]: selector 'blok2' matches no layer.*Closest names: block2"),
    (("adapters.targets=[block2.1]",), r"'block2\.1', a BatchNorm2d; adapters go on Linear"),
    (("freeze.frozen=[block2]", "adapters.targets=[block2]"), r"'block2\.0' is also selected by freeze\.frozen\[0\]"),
    (("freeze.trainable=[head,block2]", "adapters.targets=[block2]"),
     r"adapters\.targets: 'block2\.0' gets an adapter, and freeze\.trainable trains 'block2\.0\.weight' in full"),
])
def test_wrong_targets_fail_the_run_with_one_message(run_pipeline, overrides, message):
    with pytest.raises(UserError, match=message):
        run_pipeline("adapters=lora", *FAST, *overrides)


@pytest.mark.slow
def test_cli_run_with_lora(tmp_path):
    out = run_cli("adapters=lora", "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Adapters: lora" in out.stdout + out.stderr
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    assert read_json(tmp_path / "run" / "summary.json")["adapters"]["adapter_bytes"] > 0
    bad = run_cli("adapters=lora", "trainer.cache_features=true", f"hydra.run.dir={tmp_path / 'bad'}")
    assert bad.returncode != 0
    assert "trainer.cache_features with adapters (adapters.method=lora) is not supported yet" in bad.stdout + bad.stderr
    evaluated = run_cli("mode=eval", f"source.adapter={tmp_path / 'run' / 'adapter'}", f"hydra.run.dir={tmp_path / 'ev'}")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert read_json(tmp_path / "ev" / "summary.json")["val_acc"] == read_json(tmp_path / "run" / "summary.json")["val_acc"]
