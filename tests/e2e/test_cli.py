"""`python run.py` as a person types it: exit codes, messages, run folders, sweeps, --config-dir."""

from __future__ import annotations

import pytest
from helpers import read_json, run_cli

pytestmark = pytest.mark.slow
RUN_FILES = ["load_report.json", "metrics.csv", "summary.json", "model.safetensors", ".hydra/config.yaml"]


def test_default_run_prints_load_table_and_progress_and_writes_the_run_folder(tmp_path):
    out = run_cli(f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Load plan: file" in out.stdout and "head    0/2     fresh init: 2 excluded" in out.stdout
    assert "epoch 6/6" in out.stdout and "epoch 1/6" in out.stdout and "Before epoch 4 (epoch: 3): unfroze block2" in out.stdout
    for name in RUN_FILES:
        assert (tmp_path / name).is_file(), name
    summary = read_json(tmp_path / "summary.json")
    assert summary["status"] == "completed" and summary["val_acc"] >= 0.9
    assert len(summary["source_sha256"]) == 64 and "torch" in summary["versions"]


def test_unknown_key_fails_at_once_naming_it(tmp_path):
    out = run_cli("optim.lrr=0.1", f"hydra.run.dir={tmp_path}")
    assert out.returncode != 0
    assert "lrr" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "summary.json").exists()


def test_bad_value_lists_the_choices(tmp_path):
    out = run_cli("mode=trian", f"hydra.run.dir={tmp_path}")
    assert out.returncode != 0 and "train" in out.stderr and "plan" in out.stderr


def test_bad_target_names_it_and_suggests(tmp_path):
    out = run_cli("model._target_=torchvision.models.resnet81", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2
    assert "resnet81" in out.stdout and "resnet18" in out.stdout and "Traceback" not in out.stdout + out.stderr


def test_missing_checkpoint_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "weights.pt"
    out = run_cli(f"source.path={missing}", f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 2 and str(missing) in out.stdout and "Traceback" not in out.stdout + out.stderr
    assert read_json(tmp_path / "run" / "summary.json")["status"] == "failed"


def test_plan_mode_trains_nothing(tmp_path):
    out = run_cli("mode=plan", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0 and "Parameter groups" in out.stdout and "epoch 0/" not in out.stdout
    assert (tmp_path / "load_report.json").is_file() and not (tmp_path / "metrics.csv").exists()


def test_multirun_sweep_writes_one_folder_per_job(tmp_path):
    out = run_cli("-m", "optim.lr=0.01,0.05", "trainer.epochs=1", "freeze.schedule=[]",
                  f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 0, out.stdout + out.stderr
    lrs = []
    for job in ("0", "1"):
        assert read_json(tmp_path / job / "summary.json")["status"] == "completed"
        lrs.append((tmp_path / job / ".hydra" / "overrides.yaml").read_text())
    assert "optim.lr=0.01" in lrs[0] and "optim.lr=0.05" in lrs[1]


def test_users_own_config_dir_adds_a_model_and_an_experiment(tmp_path):
    conf = tmp_path / "my_conf"
    (conf / "model").mkdir(parents=True)
    (conf / "experiment").mkdir()
    (conf / "model" / "mine.yaml").write_text(
        "_target_: transfer_pipeline.models.DigitsCNN\nnum_classes: 5\nwidths: [16, 32, 48]\n")
    (conf / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: mine\nmapping:\n  exclude: [block2, head]\n"
        "  expect:\n    missing: [block2, head]\n    min_loaded: 0.2\nfreeze:\n  trainable: [block2, head]\n  schedule: []\n")
    out = run_cli("--config-dir", str(conf), "model=mine", "mode=plan", "freeze.trainable=null",
                  "mapping.on_mismatch=skip", "mapping.expect.missing=null", "mapping.expect.min_loaded=0", f"hydra.run.dir={tmp_path / 'a'}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert {m["target"] for m in read_json(tmp_path / "a" / "load_report.json")["mismatched"]} >= {"block2.0.weight"}
    out = run_cli("--config-dir", str(conf), "experiment=mine", "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'b'}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "widths" in (tmp_path / "b" / ".hydra" / "config.yaml").read_text()


def test_swapping_the_model_keeps_the_default_groups_and_the_generic_switch_working(tmp_path):
    import torch

    from transfer_pipeline.models import TinyMLP

    ckpt = tmp_path / "mine.pt"
    torch.save(TinyMLP(num_classes=6, hidden=[32, 12]).state_dict(), ckpt)
    # the default groups name the model's parts (@head, @blocks.-1), not the digits CNN's layers
    out = run_cli("model=tiny_mlp", f"source.path={ckpt}", "mode=plan", f"hydra.run.dir={tmp_path / 'a'}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "@head = fc2" in out.stdout and "unfreeze@3  fc1" in out.stdout
    assert read_json(tmp_path / "a" / "load_report.json")["missing"] == ["fc2.weight", "fc2.bias"]
    # the one-line form README gives for "my checkpoint into my model"
    out = run_cli("model=tiny_mlp", f"source.path={ckpt}", "mapping=default", "freeze=none", "data.classes=[0,1,2,3,4,5]",
                  "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'b'}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert read_json(tmp_path / "b" / "load_report.json")["missing"] == []


def test_a_value_set_on_the_command_line_gets_no_group_hint(tmp_path):
    out = run_cli("mapping.exclude=[nope]", "mode=plan", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2 and "selector 'nope' matches no parameter" in out.stdout
    assert "comes from the config group" not in out.stdout


def test_group_hints_name_only_groups_that_are_not_generic():
    from transfer_pipeline.errors import ConfigOrigins

    origins = ConfigOrigins({"mapping": "new_head", "freeze": "none", "source": "digits_0to4"}, ("freeze.schedule=[]",))
    assert "mapping=new_head" in origins.hint("mapping.expect.missing: 'head' was expected")
    assert "mapping=default" in origins.hint("mapping.exclude: x") and "freeze=none" not in origins.hint("mapping.exclude: x")
    assert origins.hint("freeze.trainable: selector 'head' matches no parameter") == ""  # freeze=none is generic
    assert origins.hint("source.path: no such file") == ""  # not a digits-specific group
    assert ConfigOrigins({"freeze": "head_then_block2"}, ("+freeze.schedule=[]",)).hint("freeze.schedule[0].unfreeze: x") == ""


# Hydra's "Could not override" and "Could not find" (issue 24): the key or group, the close names and the
# corrected override, exit 2, no traceback; worded as the schema words a `+key` on a typed node
@pytest.mark.parametrize("override, fix", [
    ("trainer.epoch=3", "did you mean trainer.epochs=3?"),
    ("mapping.expect.missng=[]", "did you mean mapping.expect.missing=[]?"),
    ("freze=none", "did you mean freeze=none?"),  # not a group: Hydra takes it for a key of the root
    ("model=resnet", "did you mean model=resnet18?"),  # a group choice with no file
    ("mode=trian", "did you mean mode=train?"),
    ("data=null", "leave the group out with '~data'"),  # Hydra's bare ValueError
])
def test_a_misspelt_key_or_group_gets_did_you_mean_and_exit_2(tmp_path, override, fix):
    out = run_cli(override, "mode=plan" if not override.startswith("mode=") else "seed=0", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2, out.stdout + out.stderr
    assert fix in out.stderr and "Traceback" not in out.stdout + out.stderr
    assert "HYDRA_FULL_ERROR" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "summary.json").exists()


def test_a_misspelt_key_reads_alike_with_and_without_plus(tmp_path):
    plain = run_cli("trainer.epoch=3", "mode=plan", f"hydra.run.dir={tmp_path / 'a'}")
    added = run_cli("+trainer.epoch=3", "mode=plan", f"hydra.run.dir={tmp_path / 'b'}")
    assert plain.returncode == added.returncode == 2
    for text in (plain.stderr, added.stdout):
        assert "trainer.epoch: not a key of trainer" in text and "Closest names: epochs" in text
        assert "did you mean trainer.epochs" in text


def test_a_misspelt_key_in_a_sweep_names_the_override_as_typed(tmp_path):
    out = run_cli("-m", "trainer.epoch=1,2", "mode=plan", f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "did you mean trainer.epochs=1,2?" in out.stderr and "Traceback" not in out.stdout + out.stderr
    assert not (tmp_path / "0").exists()
    out = run_cli("-m", "optim.lr=0.01,0.02", "freze=none", "mode=plan", f"hydra.sweep.dir={tmp_path / 'b'}")
    assert out.returncode == 2 and "did you mean freeze=none?" in out.stderr


def test_hydra_full_error_keeps_hydras_traceback(tmp_path):
    out = run_cli("trainer.epoch=3", "mode=plan", f"hydra.run.dir={tmp_path}", env={"HYDRA_FULL_ERROR": "1"})
    assert out.returncode == 1 and "Traceback" in out.stderr and "ConfigCompositionException" in out.stderr
