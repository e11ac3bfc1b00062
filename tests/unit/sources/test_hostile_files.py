"""Hostile and broken files: each gets one clear message (exit 2 from the command line), never a hang,
a traceback, the file's bytes in a message, or "set trust_pickle" for what is not a pickle.

The same files through whole runs and `python run.py` (escaped names, shard hashes, TorchScript, relative
paths): tests/e2e/test_source_runs.py."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading

import pytest
import torch
from helpers import index_with, inspect_cli
from safetensors.torch import load_file, save_file

from transfer_pipeline.errors import UserError
from transfer_pipeline.models.digits import PRETRAINED_0TO4
from transfer_pipeline.sources.read import read_path


@pytest.fixture
def sd():
    return load_file(PRETRAINED_0TO4)


def safetensors_bytes(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


# --- safetensors headers: the run and inspect refuse the same things ------------------------------------------

F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(("header", "data", "match"), [
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 16, r"tensor 'w' \(4,\) F32 needs 16 bytes, its offsets give 8"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, b"\0" * 8, r"data_offsets \[-8, 0\]: negative or reversed"),
    ({"a": F32x2, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, r"tensors 'a' and 'b' overlap"),
    ({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, r"unknown dtype 'Q4'"),
    ({"w": {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}}, b"\0" * 8, r"shape \['2'\], not a list of sizes"),
    ({"w": F32x2, "__metadata__": {"epoch": 3}}, b"\0" * 8, r"__metadata__ must map text to text"),
    ({"w": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, r"tensor 'w' is not \{dtype, shape, data_offsets\}"),
    ({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}, b"\0" * 8, r"truncated: tensor 'w' ends at byte"),
])
def test_bad_safetensors_headers_are_refused_by_run_and_inspect_alike(tmp_path, header, data, match):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(safetensors_bytes(header, data))
    with pytest.raises(UserError, match=match):
        read_path(path)
    out = inspect_cli(str(path))
    assert out.returncode == 2 and out.stdout == "" and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: source.path:")


# --- shard indexes -----------------------------------------------------------------------------------------

def test_a_shard_outside_the_index_folder_is_refused(tmp_path, sd):
    (tmp_path / "inner").mkdir()
    save_file(sd, tmp_path / "outside.safetensors")
    path = index_with(tmp_path / "inner", {k: "../outside.safetensors" for k in sd})
    with pytest.raises(UserError, match=r"names shard '\.\./outside\.safetensors', which lies outside the index's folder"):
        read_path(path)
    path = index_with(tmp_path / "inner", {k: str(tmp_path / "outside.safetensors") for k in sd})
    with pytest.raises(UserError, match="lies outside the index's folder"):
        read_path(path)


def test_a_symlinked_shard_pointing_outside_is_refused(tmp_path, sd):
    (tmp_path / "inner").mkdir()
    save_file(sd, tmp_path / "outside.safetensors")
    (tmp_path / "inner" / "shard.safetensors").symlink_to(tmp_path / "outside.safetensors")
    with pytest.raises(UserError, match="lies outside the index's folder"):
        read_path(index_with(tmp_path / "inner", {k: "shard.safetensors" for k in sd}))


@pytest.mark.parametrize(("weight_map", "match"), [
    ({"w": "model.safetensors.index.json"}, r"names itself as a shard"),
    ({"w": 7}, r"tensor 'w' maps to int '7', not a shard file name"),
    ({"w": "gone.safetensors"}, r"names shard 'gone\.safetensors', which is missing"),
    ({}, r"'weight_map' must map tensor names to shard files; it is empty"),
])
def test_bad_shard_indexes(tmp_path, weight_map, match):
    with pytest.raises(UserError, match=match):
        read_path(index_with(tmp_path, weight_map))


# --- pickles, bytes in messages -------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"\x80\x04\x95garbage-that-is-no-pickle\x0e\xff",
                                     b"\x80\x02" + bytes(range(200)), b"\x80\x05\x8c\xff\xff\xff\xff"])
def test_an_invalid_pickle_is_corrupt_not_untrusted(tmp_path, content):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(UserError) as e:
        read_path(path)
    msg = str(e.value)
    assert "trust_pickle" not in msg and "corrupt" in msg
    assert "\\x" not in msg and "garbage" not in msg  # no byte of the file is quoted


def test_an_unknown_format_is_named_without_quoting_its_bytes(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\x1b[31mSECRET-BYTES" + b"\0" * 20)
    with pytest.raises(UserError) as e:
        read_path(path)
    assert "not a checkpoint format" in str(e.value) and "SECRET" not in str(e.value)


# --- what is not a regular file ---------------------------------------------------------------------------------

def test_a_fifo_is_refused_at_once_instead_of_hanging(tmp_path):
    fifo = tmp_path / "weights.safetensors"
    os.mkfifo(fifo)
    result: dict = {}

    def go():
        try:
            read_path(fifo)
        except UserError as e:
            result["error"] = str(e)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "reading a FIFO hung"
    assert "is a FIFO (named pipe), not a file or folder" in result["error"]


def test_a_device_is_refused(tmp_path):
    with pytest.raises(UserError, match="is a character device"):
        read_path(type(tmp_path)("/dev/zero"))


def test_a_symlink_loop_gets_its_own_message(tmp_path):
    (tmp_path / "a.pt").symlink_to(tmp_path / "b.pt")
    (tmp_path / "b.pt").symlink_to(tmp_path / "a.pt")
    with pytest.raises(UserError, match="is a symbolic link that loops"):
        read_path(tmp_path / "a.pt")


def test_a_300_character_name_gets_a_clear_message(tmp_path):
    with pytest.raises(UserError, match=r"the path is too long for the filesystem .* a component of 300"):
        read_path(tmp_path / ("x" * 300))


# --- patterns that backtrack ----------------------------------------------------------------------------------

SWIN = {f"layers.{i}.blocks.{j}.attn.relative_position_bias_table": (169, 3) for i in range(4) for j in range(2)}


def test_the_swin_pattern_that_hangs_re_plans_at_once():
    from helpers import make_plan

    from transfer_pipeline.tensor_meta import TensorMeta

    source = {k: TensorMeta(s) for k, s in SWIN.items()}
    rules = [{"from": r"(\w+\.?)+\.weight", "to": r"x", "optional": True}]  # exponential in Python's re
    plan = make_plan(source, dict(source), rules)
    assert len(plan.entries) == len(source)


@pytest.mark.parametrize("where", ["rule", "selector"])
def test_a_pattern_that_still_backtracks_is_an_error_naming_the_rule_and_the_name(where):
    from helpers import make_plan

    from transfer_pipeline.tensor_meta import TensorMeta

    name = "a" * 40  # (a|a)+b takes 2**40 steps on it
    source = {name: TensorMeta((2,)), "w": TensorMeta((2,))}
    target = dict(source)
    if where == "rule":
        with pytest.raises(UserError, match=r"mapping\.rules\[0\]\.from: the regex '\(a\|a\)\+b' took over .* to match "
                                            rf"the name '{name}'"):
            make_plan(source, target, [{"from": r"(a|a)+b", "to": "w"}])
    else:
        with pytest.raises(UserError, match=rf"mapping\.exclude: the regex '\(a\|a\)\+b' took over .* '{name}'"):
            make_plan(source, target, exclude=["re:(a|a)+b"])


def test_a_tiny_file_claiming_gigabytes_allocates_nothing(tmp_path):
    import io
    import struct

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    i = data.find(b"cpuq\x06K\x04")  # the storage's element count, 4, in the legacy format's pickle
    assert i > 0
    bomb = tmp_path / "bomb.pt"
    bomb.write_bytes(data[:i] + b"cpuq\x06J" + struct.pack("<i", 2**31 - 1) + data[i + 8:])  # now 8 GiB of floats
    code = ("import sys; from pathlib import Path; from transfer_pipeline.sources.read import read_path\n"
            "def hwm():\n    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
            "import torch; before = hwm()\n"
            "try:\n    read_path(Path(sys.argv[1]))\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
            "print('grew_kb', hwm() - before)")
    out = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True, timeout=60)
    assert "UserError" in out.stdout and "cannot read" in out.stdout, out.stdout + out.stderr
    grew = int(out.stdout.rsplit("grew_kb", 1)[1])
    assert grew < 100_000, f"peak memory grew by {grew} KB for a {bomb.stat().st_size}-byte file"
