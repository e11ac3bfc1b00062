"""`@head` / `@blocks` in whole runs: the default experiment's groups (mapping=new_head,
freeze=head_then_block2, freeze=gradual) work unchanged on a torchvision and a timm ResNet, with no
selector written by hand. Offline: the source checkpoints are saved here from untrained models."""

from __future__ import annotations

import pytest
import torch
from helpers import read_json, run_cli

SMALL_DATA = ("data=synthetic", "data.channels=3", "data.image_size=16", "data.num_samples=64")


def test_a_torchvision_resnet_gets_a_new_head_then_its_last_stage_with_the_default_groups(tmp_path):
    import torchvision
    from safetensors.torch import load_file

    source = torchvision.models.resnet18(num_classes=10).state_dict()  # another task's 10-class head
    torch.save(source, tmp_path / "r18.pt")
    run = tmp_path / "run"
    out = run_cli("model=resnet18", f"source.path={tmp_path / 'r18.pt'}", *SMALL_DATA, "trainer.epochs=4",
                  f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "@head = fc (" in out.stdout and "@blocks = conv1+bn1, layer1, layer2, layer3, layer4 (" in out.stdout
    assert "unfroze layer4 (15 tensors)" in out.stdout
    report, summary = read_json(run / "load_report.json"), read_json(run / "summary.json")
    assert report["missing"] == ["fc.weight", "fc.bias"]  # exactly the head is new (mapping.expect held)
    assert summary["model_parts"]["head"] == ["fc"] and summary["model_parts"]["blocks"][0] == ["conv1", "bn1"]
    final = load_file(run / "model.safetensors")
    assert torch.equal(final["conv1.weight"], source["conv1.weight"])  # loaded, frozen all run
    assert torch.equal(final["layer3.1.conv2.weight"], source["layer3.1.conv2.weight"])
    assert torch.equal(final["layer3.1.bn2.running_mean"], source["layer3.1.bn2.running_mean"])  # bn: auto
    assert not torch.equal(final["layer4.1.conv2.weight"], source["layer4.1.conv2.weight"])  # unfrozen at epoch 3


def test_a_timm_resnet_unfreezes_stage_by_stage_with_freeze_gradual(tmp_path):
    timm = pytest.importorskip("timm")
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=10).state_dict(), tmp_path / "r18.pt")
    run = tmp_path / "run"
    out = run_cli("model=resnet18", "model._target_=timm.create_model", "+model.model_name=resnet18",
                  f"source.path={tmp_path / 'r18.pt'}", *SMALL_DATA, "freeze=gradual", "trainer.epochs=6", "mode=plan",
                  f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "@head = fc (timm get_classifier())" in out.stdout
    table = out.stdout[out.stdout.index("Parameter groups"):]
    for epoch, stage in ((1, "layer4"), (2, "layer3"), (3, "layer2"), (4, "layer1"), (5, "conv1, bn1")):
        assert f"unfreeze@{epoch}  {stage} " in table, table
    assert read_json(run / "load_report.json")["missing"] == ["fc.weight", "fc.bias"]


def test_a_block_past_the_end_is_one_clear_error(tmp_path):
    out = run_cli("freeze.schedule=[{epoch: 3, unfreeze: [@blocks.9]}]", "mode=plan", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2 and "Traceback" not in out.stdout + out.stderr
    assert ("freeze.schedule[0].unfreeze[0]: '@blocks.9': DigitsCNN has 3 block(s) (stem, block1, block2), "
            "so N in @blocks.N goes from 0 to 2") in out.stdout
    assert read_json(tmp_path / "summary.json")["status"] == "failed"
