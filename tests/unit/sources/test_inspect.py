"""`python -m transfer_pipeline.inspect PATH`: one checkpoint on its own, from headers and pickles only."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from transfer_pipeline.errors import UserError
from transfer_pipeline.sources.inspect_checkpoint import common_prefix, format_summary, main, read
from transfer_pipeline.models.digits import ASSETS, PRETRAINED_0TO4

from helpers import ROOT


def inspect_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "transfer_pipeline.inspect", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_safetensors_summary(capsys):
    assert main([str(PRETRAINED_0TO4)]) == 0
    out = capsys.readouterr().out
    assert "format: safetensors" in out
    assert "tensors: 20   parameters (elements): 23,960" in out
    assert "dtypes: float32 17 tensors, 23,957 elements; int64 3 tensors, 3 elements" in out
    assert "prefix: none shared by all names" in out
    tree, _, metadata = out.partition("\n  __metadata__:\n")  # the tree, then what the file stores besides tensors
    rows = [line.split() for line in tree.splitlines() if line.startswith("    ") and not line.strip().startswith(("-", "module"))]
    assert [r[0] for r in rows] == ["block1", "block2", "head", "stem"] and rows[2][1:3] == ["2", "325"]
    assert metadata.strip() == "source: None"


def test_wrapped_torch_checkpoint_shows_nested_key_and_prefix(capsys):
    assert main([str(ASSETS / "digits_cnn_0to4_wrapped.pt"), "--depth", "2"]) == 0
    out = capsys.readouterr().out
    assert "format: torch zip (mmap)" in out
    assert "nested keys holding tensors: 'state_dict' (20 tensors) <- weights" in out
    assert "every name starts with 'module._orig_mod.'" in out
    assert "block1.0" in out and "block1.1" in out  # depth 2


def test_nested_keys_listed_and_key_chosen(tmp_path, capsys):
    sd = load_file(PRETRAINED_0TO4)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": sd, "ema": {k: v.half() for k, v in sd.items()}, "epoch": 2}, path)
    assert main([str(path), "--key", "ema"]) == 0
    out = capsys.readouterr().out
    assert "'state_dict' (20 tensors), 'ema' (20 tensors) <- weights" in out
    assert "float16" in out


def test_sharded_folder(tmp_path):
    sd = load_file(PRETRAINED_0TO4)
    names = list(sd)
    save_file({k: sd[k] for k in names[:10]}, tmp_path / "model-1.safetensors")
    save_file({k: sd[k] for k in names[10:]}, tmp_path / "model-2.safetensors")
    weight_map = {k: "model-1.safetensors" if i < 10 else "model-2.safetensors" for i, k in enumerate(names)}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    s = read(tmp_path)
    assert "sharded safetensors (2 shards)" in s.format and len(s.meta) == 20


def test_big_safetensors_is_read_from_the_header_alone(tmp_path):
    # a 4 GB file whose data is a hole: only the header is real, so reading any data would show
    header = json.dumps({f"layers.{i}.weight": {"dtype": "BF16", "shape": [32768, 4096],
                                                 "data_offsets": [i * 2 ** 28, (i + 1) * 2 ** 28]}
                         for i in range(16)}).encode()
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + 16 * 2 ** 28)
    start = time.perf_counter()
    text = format_summary(read(path))
    assert time.perf_counter() - start < 1
    assert "(4.0 GB)" in text and "parameters (elements): 2,147,483,648" in text and "bfloat16 16 tensors, 2,147,483,648 elements" in text
    assert "every name starts with 'layers.'" in text
    assert text.index("    2 ") < text.index("    10 ")  # natural order: layer 2 before layer 10


def test_safetensors_inspect_does_not_import_torch(tmp_path):
    save_file({"a.weight": torch.ones(2)}, tmp_path / "m.safetensors")
    code = ("import sys; from transfer_pipeline.sources.inspect_checkpoint import main; rc = main([sys.argv[1]]); "
            "print('torch imported' if 'torch' in sys.modules else 'no torch'); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.safetensors")], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "no torch" in out.stdout, out.stdout + out.stderr


def test_common_prefix():
    assert common_prefix(["module.a.w", "module.b.w"]) == "module."
    assert common_prefix(["m.x.a.w", "m.x.b.w"]) == "m.x."
    assert common_prefix(["a.w", "b.w"]) == ""
    assert common_prefix(["w"]) == ""


@pytest.mark.parametrize("make,message", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b"hello"), "not a checkpoint format"),
    (lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 40), "incomplete zip archive"),
])
def test_bad_input_exits_2_with_one_message(tmp_path, make, message):
    path = tmp_path / "x.pt"
    make(path)
    out = inspect_cli(str(path))
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: source.path:") and message in out.stderr
    assert "Traceback" not in out.stderr


def test_pickled_module_needs_trust(capsys):
    path = ASSETS / "digits_cnn_0to4_module.pt"
    assert main([str(path)]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert main([str(path), "--trust-pickle"]) == 0
    assert "trust_pickle" in capsys.readouterr().out


def test_read_raises_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read(tmp_path / "nope.safetensors")
