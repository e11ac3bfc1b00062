"""Adapters under trainer.strategy=fsdp (2 gloo processes on CPU): peft's LoRA layers are split into FSDP units
(the frozen base_layer, the trained lora_A / lora_B, the head's trained copy), train what one process trains,
write adapter/ and the merged model.safetensors from the weights gathered to rank 0, and resume bit for bit.
The unit planner's handling of peft's containers is unit-tested in tests/unit/training/test_sharding.py."""

from __future__ import annotations

import shlex

import pytest
import torch
from safetensors.torch import load_file

from helpers import ROOT, read_json, run_cli
from test_fsdp_resume import launcher, max_diff, run, stop_in_second_epoch

pytestmark = pytest.mark.slow
SOURCE = ROOT / "transfer_pipeline" / "assets" / "digits_cnn_0to4.safetensors"


def test_lora_under_fsdp_trains_writes_and_merges_what_one_process_does(tmp_path):
    common = ("device=cpu", "adapters=lora", "trainer.batch_size=64", "trainer.epochs=2", "trainer.progress=false",
              "trainer.keep_epoch_checkpoints=true", "trainer.limit_train_batches=20")
    two = run([*launcher(2), "run.py", *common, "trainer.strategy=fsdp", f"hydra.run.dir={tmp_path / 'fsdp'}"])
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_cli(*common, f"hydra.run.dir={tmp_path / 'one'}", env={"OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stderr[-3000:]
    # measured 1e-7 (merged weights and adapter): float summation order over two processes
    for name in ("model.safetensors", "adapter/adapter_model.safetensors", "checkpoints/epoch_0.safetensors"):
        a, b = load_file(tmp_path / "fsdp" / name), load_file(tmp_path / "one" / name)
        assert a.keys() == b.keys(), name
        assert max_diff(a, b) < 1e-6, name
    merged = load_file(tmp_path / "fsdp" / "model.safetensors")
    assert not any("lora_" in k or "base_layer" in k or "modules_to_save" in k for k in merged)  # target's names
    source = load_file(SOURCE)
    last = load_file(tmp_path / "fsdp" / "checkpoints" / "last.safetensors")  # the adapted model's state
    base = {k: v for k, v in last.items() if ".base_layer." in k}
    assert base and all(torch.equal(v, source[k.replace(".base_layer", "")]) for k, v in base.items())  # frozen
    assert (merged["block2.0.weight"] - source["block2.0.weight"]).abs().max() > 1e-4  # the adapter is merged in
    summary = read_json(tmp_path / "fsdp" / "summary.json")
    assert summary["status"] == "completed" and summary["processes"] == 2
    assert summary["adapters"]["merge_max_rel_diff"] < summary["adapters"]["merge_rtol"]
    units = {u["module"]: u["trainable"] for u in summary["fsdp"]["units"]}
    assert units["block2.0.lora_A.default"] and units["block2.0.lora_B.default"] and not units["block2.0.base_layer"]
    assert units["head.modules_to_save.default"] and not units["head.original_module"]
    assert not [u for u in units if u.endswith(("lora_A", "lora_B", "modules_to_save"))]  # ModuleDicts: not units
    # the adapter loads with peft onto the base and gives the merged model's outputs
    from peft import PeftModel

    from transfer_pipeline.models import DigitsCNN

    plain = DigitsCNN()
    plain.load_state_dict(merged)
    base_model = DigitsCNN()
    base_model.load_state_dict({k.replace(".base_layer", "").replace(".original_module", ""): v
                                for k, v in last.items() if "lora_" not in k and "modules_to_save" not in k})
    adapted = PeftModel.from_pretrained(base_model, tmp_path / "fsdp" / "adapter").eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(adapted(x), plain.eval()(x), atol=1e-5)


def test_lora_under_fsdp_with_a_base_block_unfrozen_later_resumes_bit_for_bit(tmp_path):
    # block2 (frozen, no adapter) is unfrozen at epoch 1: trained in full, it is one of peft's modules_to_save, whose
    # trained copy is a unit trainable from the start of the plan (FSDP units are fixed when training starts)
    args = ("device=cpu", "trainer.strategy=fsdp", "adapters=lora", "trainer.epochs=2", "trainer.progress=false",
            "model._target_=helpers.slow_digits_cnn", "+model.delay=0.05", "trainer.limit_train_batches=24",
            "trainer.limit_val_batches=4", "freeze.schedule=[{epoch: 1, unfreeze: [block2]}]")
    whole = run([*launcher(2), "run.py", *args, f"hydra.run.dir={tmp_path / 'whole'}"])
    assert whole.returncode == 0, whole.stderr[-3000:]
    units = {u["module"]: u["trainable"] for u in read_json(tmp_path / "whole" / "summary.json")["fsdp"]["units"]}
    assert units["block2.0.modules_to_save.default"] and not units["block2.0.original_module"]
    assert units["block1.0.lora_A.default"] and not units["block1.0.base_layer"]
    stopped = tmp_path / "stopped"
    printed = tmp_path / "printed.txt"
    with open(printed, "w") as out:
        summary = stop_in_second_epoch(args, stopped, out)  # in epoch 2, after block2's event
    command = shlex.split(summary["resume_command"])
    said = printed.read_text()
    assert said.count("Resume with:") == 1 and said.count(summary["resume_command"]) >= 1  # rank 0 says it, once
    assert "transfer_pipeline_rank1" not in said  # not another rank's temporary folder
    resumed = run([*launcher(2), *command[2:]])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in ("model.safetensors", "adapter/adapter_model.safetensors", "checkpoints/last.safetensors"):
        a, b = load_file(stopped / name), load_file(tmp_path / "whole" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    e1 = load_file(tmp_path / "whole" / "model.safetensors")
    assert (e1["block2.0.weight"] - load_file(SOURCE)["block2.0.weight"]).abs().max() > 1e-3



def test_a_saved_adapter_trains_on_under_fsdp_as_under_ddp(tmp_path):
    saved = run_cli("device=cpu", "adapters=lora", "trainer.epochs=1", "trainer.limit_train_batches=6",
                    "trainer.progress=false", f"hydra.run.dir={tmp_path / 'first'}", env={"OMP_NUM_THREADS": "1"})
    assert saved.returncode == 0, saved.stderr[-3000:]
    common = ("device=cpu", "adapters=lora", f"source.adapter={tmp_path / 'first' / 'adapter'}", "trainer.epochs=1",
              "trainer.batch_size=64", "trainer.limit_train_batches=10", "trainer.progress=false")
    fsdp = run([*launcher(2), "run.py", *common, "trainer.strategy=fsdp", f"hydra.run.dir={tmp_path / 'fsdp'}"])
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    ddp = run([*launcher(2), "run.py", *common, f"hydra.run.dir={tmp_path / 'ddp'}"])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    # rank 0 alone put the saved adapter on (rank 1's base is on the meta device) and broadcast it with the base;
    # the same global batches on 2 processes: measured bitwise equal to DDP
    for name in ("model.safetensors", "adapter/adapter_model.safetensors"):
        a, b = load_file(tmp_path / "fsdp" / name), load_file(tmp_path / "ddp" / name)
        assert a.keys() == b.keys() and max_diff(a, b) < 1e-6, name
    summary = read_json(tmp_path / "fsdp" / "summary.json")
    assert summary["fsdp"]["load"] == "rank 0, broadcast" and summary["fsdp"]["source_bytes_read"][1] == 0
    assert summary["source_adapter"]["sha256"] == read_json(tmp_path / "ddp" / "summary.json")["source_adapter"]["sha256"]
    first = load_file(tmp_path / "first" / "adapter" / "adapter_model.safetensors")
    assert max_diff(first, load_file(tmp_path / "fsdp" / "adapter" / "adapter_model.safetensors")) > 1e-4  # trained on
