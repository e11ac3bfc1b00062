"""adapters=lora with freeze schedules and parameter groups through whole runs: a base layer an event
unfreezes trains in full beside the adapters (peft's modules_to_save), frozen bitwise until its event;
adapter/ holds it, peft puts it back, the merged model.safetensors has it in the target's names."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from helpers import read_json, stop_and_resume
from test_adapters_runs import loaded_base
from transfer_pipeline.errors import UserError
from transfer_pipeline.models import DigitsCNN
from transfer_pipeline.models.digits import PRETRAINED_0TO4

FAST = ("trainer.epochs=2", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2")
LATER = ("adapters=lora", "adapters.rank=4", "adapters.targets=[stem,block1]", "adapters.lr=0.02",
         "freeze.schedule=[{epoch: 1, unfreeze: [block2], lr: 0.002}]")
COPY = "block2.{}.modules_to_save.default.{}"


def test_a_base_layer_unfrozen_by_an_event_trains_in_full_beside_the_adapters(run_pipeline):
    from peft import PeftModel

    summary, run_dir = run_pipeline(*LATER, *FAST, "trainer.keep_epoch_checkpoints=true")
    assert summary["status"] == "completed"
    a = summary["adapters"]
    assert a["targets"] == ["stem.0", "block1.0"] and a["head"] == ["block2.0", "block2.1", "head"]
    assert a["unfrozen_later"] == {"block2.0": "freeze.schedule[0].unfreeze", "block2.1": "freeze.schedule[0].unfreeze"}
    rows = {g["group"]: g for g in summary["param_groups"]}
    assert rows["adapters"]["peak_lr"] == 0.02 and rows["unfreeze@1"]["peak_lr"] == 0.002
    assert rows["unfreeze@1"]["trainable_tensors"] == 0 and rows["unfreeze@1"]["tensors"] == 3  # before epoch 0

    source = load_file(PRETRAINED_0TO4)
    first, last = (load_file(run_dir / "checkpoints" / f) for f in ("epoch_0.safetensors", "last.safetensors"))
    for k in ("0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
        part, _, tensor = k.partition(".")
        copy, original = COPY.format(part, tensor), f"block2.{part}.original_module.{tensor}"
        assert torch.equal(first[copy], source[f"block2.{k}"]), k  # frozen until its event: bitwise as loaded
        assert torch.equal(last[original], source[f"block2.{k}"]), k  # peft's copy of the loaded layer never moves
        assert not torch.equal(last[copy], source[f"block2.{k}"]), k  # trained (and its statistics updated) after
    assert torch.equal(first["stem.0.base_layer.weight"], source["stem.0.weight"])  # adapted layers stay frozen

    saved = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert {"base_model.model.block2.0.weight", "base_model.model.block2.1.running_mean"} <= set(saved)
    config = read_json(run_dir / "adapter" / "adapter_config.json")
    assert sorted(config["modules_to_save"]) == ["block2.0", "block2.1", "head"]

    merged = load_file(run_dir / "model.safetensors")
    assert set(merged) == set(DigitsCNN(num_classes=5).state_dict())  # the target's names
    assert torch.equal(merged["block2.0.weight"], last[COPY.format(0, "weight")])
    assert torch.equal(merged["block2.1.running_var"], last[COPY.format(1, "running_var")])
    plain = DigitsCNN(num_classes=5)
    plain.load_state_dict(merged)
    adapter = PeftModel.from_pretrained(loaded_base(), str(run_dir / "adapter")).eval()
    x = torch.randn(32, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(adapter(x), plain.eval()(x), atol=1e-5)
        assert not torch.allclose(loaded_base()(x), plain(x), atol=1e-3)
    evaluated, _ = run_pipeline("mode=eval", f"source.adapter={run_dir / 'adapter'}", *FAST,
                                run_dir=run_dir.parent / "eval")  # source.adapter puts block2 back too
    assert evaluated["val_loss"] == pytest.approx(summary["val_loss"], rel=1e-6)


def test_groups_and_layer_decay_give_the_adapters_their_lrs(run_pipeline):
    summary, _ = run_pipeline("adapters=lora", "adapters.lr=0.04", "optim.layer_decay=0.5",
                              "+optim.groups=[{params: [block1], lr: 0.001}]", "freeze.trainable=[head,block2.1]",
                              "mode=plan")
    rows = {g["group"]: (g["peak_lr"], g["tensors"], g["trainable_tensors"]) for g in summary["param_groups"]}
    assert summary["adapters"]["targets"] == ["stem.0", "block1.0", "block2.0"]
    # blocks stem, block1, block2, head: layer_decay**3, **2, **1, **0
    assert rows["adapters:stem"] == (0.04 * 0.125, 2, 2) and rows["adapters:block2"] == (0.04 * 0.5, 2, 2)
    assert rows["block1"] == (0.001, 5, 2)  # the group selecting block1 takes its adapter (A, B) along
    assert rows["block2"] == (0.01 * 0.5, 3, 2)  # block2.0's frozen base weight, block2.1's copy (weight, bias)
    assert rows["head"] == (0.01, 2, 2)


@pytest.mark.parametrize("overrides, message", [
    (("freeze.schedule=[{epoch: 1, unfreeze: [blok2]}]",),
     r"freeze\.schedule\[0\]\.unfreeze: selector 'blok2' matches no parameter.*block2"),
    (("adapters.targets=[block2]", "freeze.schedule=[{epoch: 1, unfreeze: [block2]}]"),
     r"adapters\.targets: 'block2\.0' gets an adapter, and freeze\.schedule\[0\]\.unfreeze trains 'block2\.0\.weight' "
     r"in full; a layer gets an adapter or trains in full, not both"),
    (("freeze=gradual", "adapters.targets=[block1]"),
     r"adapters\.targets: 'block1\.0' gets an adapter, and freeze\.gradual trains 'block1\.0\.weight' in full"),
    (("freeze=gradual",), r"adapters\.targets=null: DigitsCNN has no Linear or Conv layer outside its head \(head\), "
                          r"freeze\.frozen and the layers freeze trains in full"),
    (("+optim.groups=[{params: [blok1], lr: 0.1}]",), r"optim\.groups\[0\]\.params: selector 'blok1' matches no parameter"),
])
def test_wrong_schedules_and_groups_fail_with_one_message(run_pipeline, overrides, message):
    with pytest.raises(UserError, match=message):
        run_pipeline("adapters=lora", "mode=plan", *overrides)


def same_tensors(a, b) -> bool:
    wa, wb = load_file(a), load_file(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_a_run_stopped_after_its_event_resumes_bitwise(run_pipeline, tmp_path, monkeypatch):
    args = (*LATER, "optim.layer_decay=0.5", "trainer.epochs=3", "trainer.limit_train_batches=4",
            "trainer.limit_val_batches=2")
    # stopped inside epoch 1, after its event fired
    reference, ref_dir, summary, out = stop_and_resume(run_pipeline, args, tmp_path, monkeypatch, 6)
    assert summary["status"] == "completed" and summary["val_loss"] == reference["val_loss"]
    for f in ("adapter/adapter_model.safetensors", "model.safetensors", "checkpoints/last.safetensors"):
        assert same_tensors(ref_dir / f, out / f), f
    assert (ref_dir / "metrics.csv").read_text().count("\n") == (out / "metrics.csv").read_text().count("\n")
