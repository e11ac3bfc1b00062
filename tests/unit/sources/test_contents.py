"""What a checkpoint holds: NaN/inf weights and casts that lose information are errors naming the
tensors (unless a key allows them), checked for what is loaded, before anything is written."""

from __future__ import annotations

import pytest
import torch
from helpers import read_json
from safetensors.torch import load_file, save_file

import transfer_pipeline as tp
from transfer_pipeline.errors import UserError
from transfer_pipeline.models import DigitsCNN
from transfer_pipeline.models.digits import PRETRAINED_0TO4


@pytest.fixture
def sd():
    return load_file(PRETRAINED_0TO4)


def saved(tmp_path, sd, name="ckpt.safetensors"):
    path = tmp_path / name
    save_file(sd, path) if name.endswith(".safetensors") else torch.save(sd, path)
    return path


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_loaded_weights_are_an_error_naming_them(run_pipeline, tmp_path, sd, value):
    sd["block2.0.weight"][0, 0, 0, 0] = value
    path = saved(tmp_path, sd)
    with pytest.raises(UserError, match=r"source\.allow_nonfinite: 1 loaded tensor\(s\) hold NaN or inf: block2\.0\.weight"):
        run_pipeline(f"source.path={path}")
    run_dir = tmp_path / "run"
    assert read_json(run_dir / "summary.json")["status"] == "failed" and not (run_dir / "metrics.csv").exists()


def test_only_what_is_loaded_is_checked(run_pipeline, tmp_path, sd):
    sd["head.weight"][:] = float("nan")  # the default experiment excludes the head
    summary, _ = run_pipeline(f"source.path={saved(tmp_path, sd)}", "trainer.epochs=1", "freeze.schedule=[]")
    assert summary["status"] == "completed"


def test_allow_nonfinite_loads_them_for_inspection(run_pipeline, tmp_path, sd):
    sd["stem.0.weight"][0] = float("nan")
    _, run_dir = run_pipeline(f"source.path={saved(tmp_path, sd)}", "source.allow_nonfinite=true", "mode=export")
    assert torch.isnan(load_file(run_dir / "model.safetensors")["stem.0.weight"][0]).all()


def test_float64_values_that_overflow_float32_are_an_error(run_pipeline, tmp_path, sd):
    sd = {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}
    sd["block1.0.weight"][0, 0, 0, 0] = 1e300
    path = saved(tmp_path, sd)
    with pytest.raises(UserError, match=r"source\.allow_lossy_cast: 1 tensor\(s\) hold values too large .*"
                                        r"block1\.0\.weight \(float64 -> float32\)"):
        run_pipeline(f"source.path={path}", "mode=export")
    _, run_dir = run_pipeline(f"source.path={path}", "source.allow_lossy_cast=true", "mode=export",
                              run_dir=tmp_path / "allowed")
    assert torch.isinf(load_file(run_dir / "model.safetensors")["block1.0.weight"][0, 0, 0, 0])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_plain_precision_changes_stay_silent(run_pipeline, tmp_path, sd, dtype):
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    _, run_dir = run_pipeline(f"source.path={saved(tmp_path, sd)}", "mode=export")
    out = load_file(run_dir / "model.safetensors")
    assert out["stem.0.weight"].dtype == torch.float32
    assert torch.equal(out["stem.0.weight"], sd["stem.0.weight"].float())


@pytest.mark.parametrize(("dtype", "name"), [(torch.int64, "int64"), (torch.bool, "bool"), (torch.complex64, "complex64")])
def test_a_change_of_kind_is_an_error_in_the_plan(run_pipeline, tmp_path, sd, dtype, name, no_tensor_reads):
    sd["block2.0.weight"] = (sd["block2.0.weight"] * 10).to(dtype)
    path = saved(tmp_path, sd, "ckpt.pt")
    with pytest.raises(UserError, match=rf"source\.allow_lossy_cast: 1 tensor\(s\) would change kind.*\n"
                                        rf"  block2\.0\.weight: {name} -> float32"):
        run_pipeline(f"source.path={path}", "mode=plan")


def test_a_change_of_kind_loads_when_allowed(run_pipeline, tmp_path, sd):
    sd["block2.0.weight"] = (sd["block2.0.weight"] * 10).round().to(torch.int64)
    _, run_dir = run_pipeline(f"source.path={saved(tmp_path, sd, 'ckpt.pt')}", "source.allow_lossy_cast=true",
                              "mode=export")
    assert torch.equal(load_file(run_dir / "model.safetensors")["block2.0.weight"], sd["block2.0.weight"].float())


def test_the_api_refuses_before_touching_the_model(sd):
    sd["stem.0.weight"][0] = float("nan")
    model = DigitsCNN(num_classes=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match="hold NaN or inf: stem.0.weight"):
        tp.load_weights(model, sd)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    tp.load_weights(model, sd, allow_nonfinite=True)
    assert torch.isnan(model.stem[0].weight[0]).all()
