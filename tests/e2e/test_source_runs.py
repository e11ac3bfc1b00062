"""Checkpoints read by whole runs: formats only a run shows (a Lightning checkpoint's prefix, names that
match nothing), what a checkpoint holds (NaN/inf, lossy casts: errors naming the tensors, nothing written),
and hostile files through `python run.py` (one message, exit 2, escaped names, never a traceback).

Reading alone: tests/unit/sources/test_source.py, test_contents.py and test_hostile_files.py.
"""

from __future__ import annotations

import argparse
import sys
import types

import pytest
import torch
from helpers import index_with, inspect_cli, read_json, run_cli, same_weights
from safetensors.torch import load_file, save_file

from transfer_pipeline.errors import UserError
from transfer_pipeline.mapping.apply import target_meta
from transfer_pipeline.mapping.nested import choose_nested
from transfer_pipeline.models import DigitsCNN
from transfer_pipeline.models.digits import PRETRAINED_0TO4
from transfer_pipeline.sources.read import read_path


@pytest.fixture
def sd() -> dict[str, torch.Tensor]:
    """The shipped digits CNN weights (18 float tensors + 3 num_batches_tracked), fresh for each test."""
    return load_file(PRETRAINED_0TO4)


# --- formats through a run ----------------------------------------------------------------------------------

def test_lightning_ckpt_with_omegaconf_and_metadata_loads_weights_only(tmp_path, sd, monkeypatch, run_pipeline):
    from omegaconf import OmegaConf

    # an AttributeDict as Lightning pickles it; the package is absent when loading (never imported)
    fake = types.ModuleType("lightning_fabric.utilities.data")

    class AttributeDict(dict):
        def __setstate__(self, state):  # would run if the real class were unpickled
            raise AssertionError("real class code ran")

    AttributeDict.__module__, AttributeDict.__qualname__ = fake.__name__, "AttributeDict"
    fake.AttributeDict = AttributeDict
    for name in ("lightning_fabric", "lightning_fabric.utilities"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    import numpy as np

    ckpt = {"epoch": 4, "global_step": 80, "pytorch-lightning_version": "2.4.0",
            "state_dict": {f"model.{k}": v for k, v in sd.items()},
            "hyper_parameters": OmegaConf.create({"lr": 0.01, "model": {"widths": [16, 32, 64]}}),
            "hparams_name": "kwargs", "datamodule_hyper_parameters": AttributeDict(batch_size=64),
            "callbacks": {"ModelCheckpoint": {"best_model_score": np.float64(0.9), "args": argparse.Namespace(x=1)}},
            "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}}], "lr_schedulers": []}
    path = tmp_path / "epoch=4.ckpt"
    torch.save(ckpt, path)
    for name in ("lightning_fabric", "lightning_fabric.utilities", fake.__name__):
        monkeypatch.delitem(sys.modules, name)

    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("weights_only")) or real_load(*a, **k))
    src = choose_nested(read_path(path), target_meta(DigitsCNN()))
    assert calls and all(w is True for w in calls)  # never the unsafe fallback
    assert src.key == "state_dict" and src.format.startswith("Lightning checkpoint")
    assert any("inert placeholders" in n for n in src.notes)
    same_weights(src, sd, "model.")

    summary, run_dir = run_pipeline(f"source.path='{path}'", "mode=export")  # quoted: '=' in the name
    report = read_json(run_dir / "load_report.json")
    assert report["stripped_prefix"] == "model." and len(report["loaded"]) == 18
    assert torch.equal(load_file(run_dir / "model.safetensors")["block2.0.weight"], sd["block2.0.weight"])


def test_names_that_match_nothing_show_both_sides(run_pipeline, tmp_path, sd):
    path = tmp_path / "other.safetensors"
    save_file({f"decoder.blocks.{i}.w": torch.ones(7) for i in range(8)}, path)
    with pytest.raises(UserError) as e:
        run_pipeline(f"source.path={path}", "mode=plan")
    msg = str(e.value)
    assert "loaded nothing" in msg and "source (8 tensors)" in msg and "target (20 tensors)" in msg
    row = next(line for line in msg.splitlines() if "decoder.blocks.0.w (7)" in line)
    assert "stem.0.weight (16, 1, 3, 3)" in row
    assert "decoder.blocks.5.w" not in msg  # five of each


def test_bad_checkpoints_on_the_command_line_exit_2_without_traceback(tmp_path, sd):
    cut = tmp_path / "cut.pt"
    torch.save(sd, cut)
    cut.write_bytes(cut.read_bytes()[:1000])
    out = run_cli(f"source.path={cut}", "mode=plan", f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "truncated" in out.stdout + out.stderr and "Traceback" not in out.stdout + out.stderr
    assert read_json(tmp_path / "run" / "summary.json")["status"] == "failed"


# --- what a checkpoint holds: NaN/inf and casts that lose information ---------------------------------------

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


# --- hostile files through a run and the command line -------------------------------------------------------

def test_control_characters_in_names_and_metadata_are_escaped_when_printed(tmp_path):
    path = tmp_path / "esc.safetensors"
    save_file({"evil\x1b[2Jname.weight": torch.zeros(2)}, path, metadata={"note": "\x1b]0;pwned\x07"})
    out = inspect_cli(str(path), "--depth", "2")
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and "\x07" not in out.stdout and "\\x1b" in out.stdout
    run = run_cli(f"source.path={path}", "mode=plan", "mapping=default", "freeze=none", "mapping.on_mismatch=skip",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert "\x1b" not in run.stdout + run.stderr and "\\x1b" in run.stdout


def test_the_recorded_hash_covers_every_shard(run_pipeline, tmp_path, sd):
    names = list(sd)
    save_file({k: sd[k] for k in names[:10]}, tmp_path / "a.safetensors")
    save_file({k: sd[k] for k in names[10:]}, tmp_path / "b.safetensors")
    index = index_with(tmp_path, {k: "a.safetensors" if i < 10 else "b.safetensors" for i, k in enumerate(names)})
    first, _ = run_pipeline(f"source.path={index}", "mode=plan", run_dir=tmp_path / "r1")
    sd[names[-1]] = sd[names[-1]] + 1
    save_file({k: sd[k] for k in names[10:]}, tmp_path / "b.safetensors")  # only a shard changes
    second, _ = run_pipeline(f"source.path={index}", "mode=plan", run_dir=tmp_path / "r2")
    assert first["source_sha256"] != second["source_sha256"]


def test_torchscript_archives_are_a_source(run_pipeline, tmp_path, sd):
    model = DigitsCNN(num_classes=5).eval()
    model.load_state_dict(sd)
    path = tmp_path / "traced.pt"
    torch.jit.save(torch.jit.trace(model, torch.randn(2, 1, 8, 8)), path)
    src = read_path(path)
    assert src.format == "TorchScript archive" and torch.equal(src.get("block2.0.weight"), sd["block2.0.weight"])
    out = inspect_cli(str(path))
    assert out.returncode == 0 and "format: TorchScript archive" in out.stdout and "tensors: 20" in out.stdout
    summary, run_dir = run_pipeline(f"source.path={path}", "mode=export")
    assert summary["status"] == "exported"
    assert torch.equal(load_file(run_dir / "model.safetensors")["block1.0.weight"], sd["block1.0.weight"])


def test_relative_paths_are_read_from_the_working_directory_and_the_message_says_so(tmp_path):
    out = run_cli("source.path=some/where.pt", "mode=plan", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert out.returncode == 2
    assert f"no such file: {tmp_path}/some/where.pt (relative paths are read from {tmp_path})" in out.stdout
    assert read_json(tmp_path / "summary.json")["status"] == "failed"


def test_mode_plan_with_a_backtracking_selector_ends_with_a_message(tmp_path):
    out = run_cli("mode=plan", "mapping.exclude=[\"re:(h|h)+(e|e)+(a|a)+(d|d)+z\"]", f"hydra.run.dir={tmp_path}",
                  timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "matches no parameter" in out.stdout or "took over" in out.stdout
