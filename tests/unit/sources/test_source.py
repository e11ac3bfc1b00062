"""transfer_pipeline.sources.read: every checkpoint format and source kind, made by the test, and every bad input.

Each test writes its checkpoint into tmp_path, reads it back through `read_path` / `read_source`, and
checks names, values (torch.equal) and messages. Checkpoints read by whole runs: tests/e2e/test_source_runs.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from transfer_pipeline.errors import UserError
from transfer_pipeline.mapping.apply import target_meta
from transfer_pipeline.models import DigitsCNN
from transfer_pipeline.models.digits import PRETRAINED_0TO4
from transfer_pipeline.sources.safe_load import Opaque, PlainDict
from transfer_pipeline.schema import SourceConfig
from transfer_pipeline.mapping.nested import choose_nested
from transfer_pipeline.sources.read import preferred, read_path, read_source, sniff

from helpers import same_weights


@pytest.fixture(scope="module")
def sd() -> dict[str, torch.Tensor]:
    """The shipped digits CNN weights (18 float tensors + 3 num_batches_tracked)."""
    return load_file(PRETRAINED_0TO4)


@pytest.fixture(scope="module")
def target():
    return target_meta(DigitsCNN(num_classes=5))


# --- formats -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_plain_state_dict(tmp_path, sd, suffix):
    path = tmp_path / f"weights{suffix}"
    torch.save(sd, path)
    src = read_path(path)
    same_weights(src, sd)
    assert src.format == "torch zip (mmap)" and src.key == "" and sniff(path) == "torch"


def test_legacy_torch_format(tmp_path, sd):
    path = tmp_path / "old.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    src = read_path(path)
    same_weights(src, sd)
    assert src.format.startswith("torch legacy")


@pytest.mark.parametrize("key", ["state_dict", "model", "module", "ema", "model_ema", "params"])
def test_nested_key_found_automatically_and_said(tmp_path, sd, target, key):
    path = tmp_path / "ckpt.pt"
    torch.save({key: sd, "epoch": 3, "optimizer": {"lr": 0.1}}, path)
    src = choose_nested(read_path(path), target)
    same_weights(src, sd)
    assert src.key == key and src.nested == {key: len(sd)}
    assert any(key in n for n in src.notes)


def test_auto_picks_the_nested_dict_that_fits_the_target(tmp_path, sd, target):
    other = {f"decoder.{i}.weight": torch.ones(3) for i in range(30)}  # more tensors, but fits nothing
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": other, "model_ema": ema}, path)
    src = choose_nested(read_path(path), target)
    assert src.key == "model_ema"
    assert torch.equal(src.get("stem.0.weight"), ema["stem.0.weight"])
    note = src.notes[0]
    assert "source.key=auto picked nested key 'model_ema'" in note and "'state_dict' 0" in note


def test_equal_fit_prefers_state_dict_over_ema_and_explicit_key_overrides(tmp_path, sd, target):
    ema = {k: v * 2 for k, v in sd.items()}
    path = tmp_path / "ckpt.pt"
    torch.save({"ema": ema, "state_dict": sd}, path)
    assert choose_nested(read_path(path), target).key == "state_dict"
    src = choose_nested(read_path(path, key="ema"), target)
    assert src.key == "ema" and torch.equal(src.get("stem.0.weight"), ema["stem.0.weight"])
    assert "source.key" in src.notes[0]


def test_deeper_nested_key_path(tmp_path, sd, target):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {"state_dict": sd}, "epoch": 1}, path)
    assert choose_nested(read_path(path), target).key == "model.state_dict"
    assert read_path(path, key="model.state_dict").key == "model.state_dict"


def test_stand_ins_run_no_code_and_keep_state():
    o = Opaque(1, a=2)
    o.__setstate__({"x": 1})
    assert o.state == {"x": 1} and o.args == (1,) and o.kwargs == {"a": 2}
    assert type(PlainDict()) is dict and PlainDict({"a": 1}) == {"a": 1}


def test_safetensors_is_lazy_and_exact(tmp_path, sd, monkeypatch):
    path = tmp_path / "model.safetensors"
    save_file(sd, path, metadata={"format": "pt", "note": "hi"})
    src = read_path(path)
    assert src.format == "safetensors" and src.extra == {"format": "pt", "note": "hi"}
    same_weights(src, sd)


def test_safetensors_meta_comes_from_the_header_without_reading_data(tmp_path):
    path = tmp_path / "big.safetensors"
    save_file({"a": torch.zeros(256, 256, dtype=torch.float16), "b": torch.zeros(3, dtype=torch.bfloat16)}, path)
    from transfer_pipeline.sources.safetensors_header import read_header

    header, _ = read_header(path)
    assert header["a"]["shape"] == [256, 256]
    src = read_path(path)
    assert src.meta["a"].dtype == "float16" and src.meta["b"].dtype == "bfloat16"


def _shard(sd: dict[str, torch.Tensor], n: int) -> list[dict[str, torch.Tensor]]:
    names = list(sd)
    return [{k: sd[k] for k in names[i::n]} for i in range(n)]


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_sharded_checkpoint_with_index(tmp_path, sd, kind):
    weight_map = {}
    for i, part in enumerate(_shard(sd, 3), start=1):
        name = f"model-{i:05d}-of-00003.{kind}"
        (save_file(part, tmp_path / name) if kind == "safetensors" else torch.save(part, tmp_path / name))
        weight_map.update(dict.fromkeys(part, name))
    index = tmp_path / f"model.{kind}.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}))
    src = read_path(index)
    assert "3 shards" in src.format and src.path == index
    same_weights(src, sd)


def test_hf_folder_with_model_safetensors(tmp_path, sd):
    save_file(sd, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text("{}")
    src = read_path(tmp_path)
    assert src.path == tmp_path / "model.safetensors"
    same_weights(src, sd)


def test_hf_folder_with_shards_and_index(tmp_path, sd):
    weight_map = {}
    for i, part in enumerate(_shard(sd, 2), start=1):
        save_file(part, tmp_path / f"model-0000{i}-of-00002.safetensors")
        weight_map.update(dict.fromkeys(part, f"model-0000{i}-of-00002.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "config.json").write_text("{}")
    same_weights(read_path(tmp_path), sd)


def test_hf_folder_with_pytorch_model_bin(tmp_path, sd):
    torch.save(sd, tmp_path / "pytorch_model.bin")
    same_weights(read_path(tmp_path), sd)


def test_torchvision_weights_enum_reads_the_cached_file_lazily(torch_home_with_resnet18, monkeypatch):
    _, ckpt = torch_home_with_resnet18
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append((k.get("weights_only"), k.get("mmap"))) or real_load(*a, **k))
    src = read_source(SourceConfig(weights="ResNet18_Weights.IMAGENET1K_V1"))
    assert src.description == "torchvision weights ResNet18_Weights.IMAGENET1K_V1"
    assert calls == [(True, True)]
    expected = real_load(ckpt, weights_only=True)
    assert len(src.meta) == 122 and torch.equal(src.get("layer4.1.conv2.weight"), expected["layer4.1.conv2.weight"])


def test_torchvision_weights_not_an_enum():
    with pytest.raises(UserError, match=r"source\.weights: 'ResNet18_Weights\.NOPE' is not a torchvision weights enum"):
        read_source(SourceConfig(weights="ResNet18_Weights.NOPE"))


def tiny_state_dict(scale: float = 1.0) -> dict[str, torch.Tensor]:
    """A `_target_` that returns a state dict (used below through source.model)."""
    return {"fc0.weight": torch.full((32, 64), scale), "fc0.bias": torch.zeros(32)}


def test_target_callable_returning_a_state_dict():
    src = read_source(SourceConfig(model={"_target_": "test_source.tiny_state_dict", "scale": 2.0}))
    assert src.description == "state dict from test_source.tiny_state_dict"
    assert torch.equal(src.get("fc0.weight"), torch.full((32, 64), 2.0))


def test_target_callable_returning_a_module():
    src = read_source(SourceConfig(model={"_target_": "torch.nn.Linear", "in_features": 3, "out_features": 2}))
    assert set(src.meta) == {"weight", "bias"} and src.meta["weight"].shape == (2, 3)


def test_target_callable_returning_something_else():
    with pytest.raises(UserError, match=r"source\.model\._target_: builtins\.list returned list; expected an nn\.Module "
                                        r"or a state dict"):
        read_source(SourceConfig(model={"_target_": "builtins.list"}))


def test_only_one_source_kind():
    with pytest.raises(UserError, match="set only one of source.path, source.model, source.weights"):
        read_source(SourceConfig(path="x.pt", weights="ResNet18_Weights.IMAGENET1K_V1"))


def test_full_pickled_module_needs_trust_pickle(tmp_path, sd):
    model = DigitsCNN()
    model.load_state_dict(sd)
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(UserError, match=r"holds pickled Python objects \(.*DigitsCNN.*\).*source\.trust_pickle=true"):
        read_path(path)
    src = read_path(path, trust_pickle=True)
    assert any("trust_pickle" in n for n in src.notes)
    same_weights(src, sd)


class Custom:
    def __init__(self) -> None:
        self.x = 1


def test_unknown_pickled_class_is_refused_and_named(tmp_path, sd):
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": sd, "extra": Custom()}, path)
    with pytest.raises(UserError, match=r"test_source\.Custom.*source\.trust_pickle=true"):
        read_path(path)


# --- bad input ---------------------------------------------------------------------------------------

def test_missing_file_names_path_and_close_names(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match=r"source\.path: no such file: .*modle\.safetensors\. Closest names: "
                                        r"model\.safetensors"):
        read_path(tmp_path / "modle.safetensors")


def test_unreadable_file(tmp_path, monkeypatch):
    import transfer_pipeline.sources.read as source

    path = tmp_path / "locked.pt"
    path.write_bytes(b"PK\x03\x04")

    def deny(p, *a, **k):
        raise PermissionError(13, "Permission denied", str(p))

    monkeypatch.setattr(source, "open", deny, raising=False)  # as root, chmod would not stop a read
    with pytest.raises(UserError, match=r"source\.path: cannot read .*locked\.pt \(Permission denied\)\. Check the "
                                        r"file's permissions"):
        read_path(path)


def test_truncated_torch_zip(tmp_path, sd):
    path = tmp_path / "cut.pt"
    torch.save(sd, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match=r"cut\.pt is an incomplete zip archive .*truncated"):
        read_path(path)


def test_truncated_legacy_torch_file(tmp_path, sd):
    path = tmp_path / "cut.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match=r"cannot read .*cut\.pth as a PyTorch checkpoint .*truncated or corrupt"):
        read_path(path)


def test_truncated_safetensors(tmp_path, sd):
    path = tmp_path / "cut.safetensors"
    save_file(sd, path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match=r"cut\.safetensors is truncated: tensor '[\w.]+' ends at byte [\d,]+ of a file "
                                        r"of [\d,]+"):
        read_path(path)


def test_corrupt_safetensors_header(tmp_path):
    path = tmp_path / "bad.safetensors"
    header = b'{"a": {"dtype": "F32"}}'
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)
    with pytest.raises(UserError, match=r"bad\.safetensors has a corrupt safetensors header"):
        read_path(path)


@pytest.mark.parametrize("name,content,message", [
    ("model.pt", b"this is a text file, not weights\n", r"model\.pt is not a checkpoint format this pipeline reads"),
    ("model.safetensors", b"\x89PNG\r\n\x1a\n" + b"\0" * 32, r"model\.safetensors is not a checkpoint format"),
    ("empty.pt", b"", r"empty\.pt is empty\. Expected \.safetensors, a torch\.save file"),
    ("notes.json", b'{"hello": 1}', r"notes\.json is not a shard index with a 'weight_map'"),
])
def test_wrong_format(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        read_path(path)


def test_format_is_sniffed_not_taken_from_the_name(tmp_path, sd):
    path = tmp_path / "really_safetensors.pt"
    save_file(sd, path)
    assert read_path(path).format == "safetensors"


def test_index_naming_a_missing_shard(tmp_path, sd):
    parts = _shard(sd, 2)
    save_file(parts[0], tmp_path / "a.safetensors")
    weight_map = {**dict.fromkeys(parts[0], "a.safetensors"), **dict.fromkeys(parts[1], "b.safetensors")}
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(UserError, match=r"names shard 'b\.safetensors', which is missing from"):
        read_path(index)


def test_index_naming_a_tensor_its_shard_lacks(tmp_path, sd):
    save_file(sd, tmp_path / "a.safetensors")
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"ghost.weight": "a.safetensors"}}))
    with pytest.raises(UserError, match=r"says 'ghost\.weight' is in shard 'a\.safetensors', but that shard has no"):
        read_path(index)


def test_nested_key_that_does_not_exist_lists_the_keys_that_do(tmp_path, sd):
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": sd, "ema": sd, "epoch": 3}, path)
    with pytest.raises(UserError, match=r"source\.key='model': .* has no such nested key\. Keys holding tensors: "
                                        r"'state_dict' \(20 tensors\), 'ema' \(20 tensors\)"):
        read_path(path, key="model")


def test_key_on_a_safetensors_file_is_an_error(tmp_path, sd):
    save_file(sd, tmp_path / "m.safetensors")
    with pytest.raises(UserError, match=r"source\.key='ema': .* safetensors file, which is flat"):
        read_path(tmp_path / "m.safetensors", key="ema")


def test_checkpoint_without_tensors(tmp_path):
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(UserError, match=r"holds a dict \(keys: epoch, lr\) with no tensors in it"):
        read_path(path)


def test_folder_without_a_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match=r"folder .* has no model\.safetensors.*it has: config\.json"):
        read_path(tmp_path)


def test_reading_needs_no_target_and_returns_every_nested_candidate(tmp_path, sd):
    path = tmp_path / "ckpt.pt"
    torch.save({"ema": sd, "state_dict": {k: v for k, v in list(sd.items())[:3]}, "epoch": 2}, path)
    src = read_path(path)
    assert set(src.candidates) == {"ema", "state_dict"} and src.meta == {}
    assert src.candidates["ema"].key == "ema" and len(src.candidates["state_dict"].meta) == 3
    # without a target the usual key wins (inspect); with one, the fit decides (the plan)
    assert preferred(read_path(path)).key == "state_dict"
    assert choose_nested(src, target_meta(DigitsCNN())).key == "ema"


def test_an_explicit_key_returns_that_state_dict_alone(tmp_path, sd):
    path = tmp_path / "ckpt.pt"
    torch.save({"ema": sd, "state_dict": sd}, path)
    src = read_path(path, key="ema")
    assert not src.candidates and src.key == "ema" and "source.key" in src.notes[0]


def test_metadata_checkpoint_is_unpickled_once(tmp_path, monkeypatch):
    """The safe metadata classes of a zip checkpoint are registered up front: one weights_only load."""
    import argparse

    from omegaconf import OmegaConf

    from transfer_pipeline.sources import safe_load

    path = tmp_path / "c.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hparams": OmegaConf.create({"a": 1, "b": [1, 2]}),
                "args": argparse.Namespace(x=1)}, path)
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("weights_only")) or real(*a, **k))
    obj, notes = safe_load.torch_load(path, trust_pickle=False, zipped=True)
    assert calls == [True]
    assert torch.equal(obj["state_dict"]["w"], torch.ones(2)) and "inert placeholders" in notes[0]
