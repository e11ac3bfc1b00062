"""mode=interpolate (WiSE-FT, run/interpolating.py): the weights between the source and a fine-tuned run, evaluated
on val and the shifted split, the best exported and read back; and the inputs that must be refused."""

from __future__ import annotations

import csv

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import read_json
from transfer_pipeline.errors import UserError
from transfer_pipeline.models.digits import PRETRAINED_0TO4

TUNE = ("freeze=none", "data.shift=rotated", "trainer.epochs=2", "trainer.limit_train_batches=6")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    from helpers import compose_config
    from transfer_pipeline.run.lifecycle import run

    run_dir = tmp_path_factory.mktemp("tuned") / "run"
    summary = run(compose_config(*TUNE), run_dir)
    assert summary["status"] == "completed"
    return run_dir, summary


def test_interpolation_evaluates_every_a_and_exports_the_best_read_back(run_pipeline, tuned, tmp_path):
    tuned_dir, tuned_summary = tuned
    summary, out = run_pipeline("mode=interpolate", f"interpolate.run={tuned_dir}", "data.shift=rotated",
                                "interpolate.alphas=[0, 0.5, 1]")
    assert summary["status"] == "interpolated"
    with open(out / "interpolate.csv") as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    assert [row["alpha"] for row in rows] == [0.0, 0.5, 1.0]
    assert set(rows[0]) == {"alpha", "val_loss", "val_acc", "shifted_loss", "shifted_acc"}
    # a = 1 is the fine-tuned run's own weights: its last epoch's numbers exactly
    assert rows[2]["val_acc"] == pytest.approx(tuned_summary["val_acc"], abs=1e-12)
    assert rows[2]["shifted_acc"] == pytest.approx(tuned_summary["shifted_acc"], abs=1e-12)
    chosen = summary["interpolate"]["chosen_alpha"]
    best = max(row["val_acc"] for row in rows)
    assert chosen == min(row["alpha"] for row in rows if row["val_acc"] == best)  # ties: the a nearest the source
    assert summary["val_acc"] == best and (out / "interpolate.png").is_file()
    # the file is (1 - a) source + a tuned for the loaded tensors, the tuned head as it is
    written, source, ft = load_file(out / "model.safetensors"), load_file(PRETRAINED_0TO4), load_file(
        tuned_dir / "model.safetensors")
    for k, t in written.items():
        if k.startswith("head."):
            assert torch.equal(t, ft[k])
        elif t.is_floating_point():
            assert torch.allclose(t, (1 - chosen) * source[k] + chosen * ft[k], atol=1e-6), k
    assert summary["interpolate"]["loaded_tensors"] == 18


def test_the_mix_at_one_point(run_pipeline, tuned):
    tuned_dir, _ = tuned
    summary, out = run_pipeline("mode=interpolate", f"interpolate.run={tuned_dir}", "interpolate.alphas=[0.25]")
    written, source, ft = (load_file(p) for p in (out / "model.safetensors", PRETRAINED_0TO4,
                                                  tuned_dir / "model.safetensors"))
    assert summary["interpolate"]["chosen_alpha"] == 0.25
    w = "block1.0.weight"
    assert torch.allclose(written[w], 0.75 * source[w] + 0.25 * ft[w], atol=1e-6)
    assert torch.equal(written["block1.1.num_batches_tracked"], ft["block1.1.num_batches_tracked"])


def test_a_run_without_a_recorded_source_or_weights_is_refused(run_pipeline, tmp_path):
    scratch, scratch_dir = run_pipeline("experiment=from_scratch", "trainer.epochs=1", "trainer.limit_train_batches=2",
                                        run_dir=tmp_path / "scratch")
    with pytest.raises(UserError, match="the run recorded no source"):
        run_pipeline("mode=interpolate", f"interpolate.run={scratch_dir}", run_dir=tmp_path / "a")
    planned, plan_dir = run_pipeline("mode=plan", run_dir=tmp_path / "plan")
    with pytest.raises(UserError, match=r"has no model.safetensors \(its status: planned\)"):
        run_pipeline("mode=interpolate", f"interpolate.run={plan_dir}", run_dir=tmp_path / "b")
    with pytest.raises(UserError, match="interpolate.run"):
        run_pipeline("mode=interpolate", f"interpolate.run={tmp_path / 'nowhere'}", run_dir=tmp_path / "c")


def test_another_source_another_model_or_damaged_weights_are_refused(run_pipeline, tuned, tmp_path):
    tuned_dir, _ = tuned
    other = tmp_path / "other.safetensors"
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in load_file(PRETRAINED_0TO4).items()}, other)
    with pytest.raises(UserError, match=r"the run fine-tuned from .*digits_cnn_0to4.safetensors \(sha256 .*this run's "
                                         r"source is .*other.safetensors"):
        run_pipeline("mode=interpolate", f"interpolate.run={tuned_dir}", f"source.path={other}", run_dir=tmp_path / "a")
    with pytest.raises(UserError, match=r"head.bias is \[5\], this model's \[3\].*model.num_classes"):
        run_pipeline("mode=interpolate", f"interpolate.run={tuned_dir}", "data.classes=[5,6,7]", "model.num_classes=3",
                     run_dir=tmp_path / "b")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "summary.json").write_text((tuned_dir / "summary.json").read_text())
    (broken / "model.safetensors").write_bytes((tuned_dir / "model.safetensors").read_bytes()[:100])
    with pytest.raises(UserError, match=r"cannot read .*model.safetensors as safetensors.*damaged"):
        run_pipeline("mode=interpolate", f"interpolate.run={broken}", run_dir=tmp_path / "c")
    assert read_json(tmp_path / "c" / "summary.json")["status"] == "failed"
    with pytest.raises(UserError, match="mode=interpolate with adapters"):
        run_pipeline("mode=interpolate", f"interpolate.run={tuned_dir}", "adapters=lora", run_dir=tmp_path / "d")


@pytest.mark.parametrize("overrides, message", [
    (("mode=interpolate",), "mode=interpolate needs interpolate.run"),
    (("interpolate.run=x",), "interpolate.run is set but mode is not interpolate"),
    (("mode=interpolate", "interpolate.run=x", "interpolate.alphas=[-0.1, 0.5]"), r"interpolate.alphas\[0\]=-0.1"),
    (("mode=interpolate", "interpolate.run=x", "interpolate.alphas=[1.5]"), r"interpolate.alphas\[0\]=1.5"),
    (("mode=interpolate", "interpolate.run=x", "interpolate.alphas=[]"), "give 1 to 101 values"),
    (("mode=interpolate", "interpolate.run=x", "interpolate.alphas=[0.5, 0.5]"), "appears twice"),
])
def test_interpolate_settings_are_checked(overrides, message):
    from helpers import compose_config

    with pytest.raises(UserError, match=message):
        compose_config(*overrides)
