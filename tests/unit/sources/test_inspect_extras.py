"""`inspect` shows what a checkpoint stores besides tensors (issue 24): Lightning's hyper-parameters, an `args`
Namespace, a config, epoch and step, the Lightning version, a safetensors file's __metadata__; one line per
value, nested dicts as dotted keys up to a limit. Read weights-only: no pickled code ever runs."""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from transfer_pipeline.errors import UserError
from transfer_pipeline.models.digits import PRETRAINED_0TO4
from transfer_pipeline.sources.inspect_checkpoint import MAX_KEYS, MAX_VALUE, format_summary, main, read


@pytest.fixture(scope="module")
def sd() -> dict[str, torch.Tensor]:
    return load_file(PRETRAINED_0TO4)


def section(text: str, title: str = "stored besides tensors") -> list[str]:
    """The lines of the section, without its title."""
    head, found, rest = text.partition(f"\n  {title}:\n")
    assert found, text
    return rest.splitlines()


def lightning(sd, path, **extra):
    from omegaconf import OmegaConf

    torch.save({"epoch": 4, "global_step": 80, "pytorch-lightning_version": "2.1.0",
                "state_dict": {"model." + k: v for k, v in sd.items()},
                "loops": {"fit_loop": {"state_dict": {}}}, "callbacks": {"ModelCheckpoint": {"best_model_path": "x"}},
                "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 0.1}]}],
                "hparams_name": "kwargs",
                "hyper_parameters": {"num_classes": 5, "backbone": {"name": "resnet18", "widths": [16, 32]},
                                     "cfg": OmegaConf.create({"optim": {"lr": 0.01}})},
                **extra}, path)
    return path


def test_a_lightning_checkpoint_shows_what_builds_the_target(sd, tmp_path, capsys):
    path = lightning(sd, tmp_path / "last.ckpt")
    assert main([str(path)]) == 0
    lines = section(capsys.readouterr().out)
    assert lines[:6] == ["    hyper_parameters (dict, 4 keys):",
                         "      hyper_parameters.num_classes: 5",
                         "      hyper_parameters.backbone.name: resnet18",
                         "      hyper_parameters.backbone.widths: [16, 32]",
                         "      hyper_parameters.cfg.optim.lr: 0.01",  # an OmegaConf node read as data, not unpickled
                         "    hparams_name: kwargs"]
    assert "    epoch: 4" in lines and "    global_step: 80" in lines and "    pytorch-lightning_version: 2.1.0" in lines
    (other,) = [ln for ln in lines if ln.startswith("    other entries: ")]
    assert "loops (dict of 1)" in other and "callbacks (dict of 1)" in other
    assert "optimizer_states (list of 1, holds tensors)" in other and "state_dict" not in other  # the weights: above


def test_args_namespace_and_config_dicts_read_weights_only(sd, tmp_path):
    path = tmp_path / "train.pth"
    torch.save({"model": sd, "epoch": 30, "arch": "resnet18",
                "args": argparse.Namespace(arch="resnet18", lr=0.1, data=pathlib.PurePosixPath("/data/imagenet")),
                "config": {"model": {"num_classes": 1000, "drop_rate": 0.2}}, "cfg": {}}, path)
    text = format_summary(read(path))
    assert "metadata objects (e.g. hyper-parameters) read as inert placeholders" in text  # weights_only, stand-ins
    lines = section(text)
    assert lines == ["    args (argparse.Namespace, 3 keys):", "      args.arch: resnet18", "      args.lr: 0.1",
                     "      args.data: /data/imagenet",
                     "    config (dict, 2 keys):", "      config.model.num_classes: 1000", "      config.model.drop_rate: 0.2",
                     "    cfg (dict): empty", "    arch: resnet18", "    epoch: 30"]


def test_values_stay_on_one_line_and_long_ones_are_cut(sd, tmp_path):
    path = tmp_path / "long.pt"
    many = {f"k{i:02d}": i for i in range(MAX_KEYS + 7)}
    torch.save({"state_dict": sd, "note": "line one\nline two", "prompt": "x" * 500, "config": many}, path)
    lines = section(format_summary(read(path)))
    assert "    note: line one\\nline two" in lines
    (prompt,) = [ln for ln in lines if ln.startswith("    prompt: ")]
    assert prompt.endswith("...") and len(prompt) == len("    prompt: ") + MAX_VALUE
    assert lines.count("      ... (+7 more)") == 1 and f"      config.k{MAX_KEYS - 1:02d}: {MAX_KEYS - 1}" in lines
    assert f"      config.k{MAX_KEYS:02d}: {MAX_KEYS}" not in lines
    assert "    config (dict, 27 keys):" in lines


def test_a_plain_state_dict_has_no_section(sd, tmp_path):
    torch.save(sd, tmp_path / "sd.pt")
    assert "stored besides tensors" not in format_summary(read(tmp_path / "sd.pt"))


def test_safetensors_metadata_one_line_each(sd, tmp_path):
    path = tmp_path / "m.safetensors"
    save_file(sd, path, metadata={"format": "pt", "ss_tag_frequency": '{"a": 1, ' * 40 + "}"})
    lines = sorted(section(format_summary(read(path)), "__metadata__"))  # the header's order is the writer's
    assert lines[0] == "    format: pt" and len(lines) == 2
    assert lines[1].startswith("    ss_tag_frequency: {\"a\": 1") and lines[1].endswith("...")
    assert len(lines[1]) == len("    ss_tag_frequency: ") + MAX_VALUE


EVIL = textwrap.dedent("""\
    import pathlib
    pathlib.Path(__file__).with_name("imported").touch()


    class Config:
        def __init__(self):
            self.arch = "resnet50"

        def __setstate__(self, state):
            pathlib.Path(__file__).with_name("unpickled").touch()
            self.__dict__.update(state)
""")


def test_a_pickled_class_is_named_never_run_and_the_tensors_still_show(sd, tmp_path, monkeypatch, capsys):
    (tmp_path / "evilcfg.py").write_text(EVIL)
    torch.save(sd, tmp_path / "sd.pt")
    subprocess.run([sys.executable, "-c", "import torch, evilcfg; torch.save({'model': torch.load('sd.pt'), "
                    "'args': evilcfg.Config(), 'epoch': 3}, 'ckpt.pt')"], cwd=tmp_path, check=True)
    for marker in ("imported", "unpickled"):
        (tmp_path / marker).unlink(missing_ok=True)
    monkeypatch.syspath_prepend(str(tmp_path))  # importable, so only the loader keeps it from running
    assert main([str(tmp_path / "ckpt.pt")]) == 0
    out = capsys.readouterr().out
    assert "tensors: 20" in out and "a run needs source.trust_pickle=true for this file" in out
    assert section(out)[0].startswith("    args: a pickled evilcfg.Config, not read without --trust-pickle")
    assert not (tmp_path / "imported").exists() and not (tmp_path / "unpickled").exists()
    assert "evilcfg" not in sys.modules
    try:  # trusted: the object is unpickled and its attributes shown
        assert main([str(tmp_path / "ckpt.pt"), "--trust-pickle"]) == 0
        assert "      args.arch: resnet50" in section(capsys.readouterr().out)
    finally:
        sys.modules.pop("evilcfg", None)


def test_a_whole_pickled_module_is_still_refused_without_trust(tmp_path):
    from transfer_pipeline.models import DigitsCNN

    torch.save({"model": DigitsCNN(num_classes=5), "epoch": 3}, tmp_path / "module.pt")
    with pytest.raises(UserError, match=r"holds pickled Python objects \(transfer_pipeline\.models\.digits\.DigitsCNN"):
        read(tmp_path / "module.pt")
    text = format_summary(read(tmp_path / "module.pt", trust_pickle=True))
    assert section(text) == ["    epoch: 3"]
