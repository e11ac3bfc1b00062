"""The source's SHA-256: a big local file's hash starts before torch is imported and the plan keeps it
(one read of the file), and what is recorded is the file's SHA-256 however the path was given."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from helpers import index_with
from safetensors.torch import save_file

from transfer_pipeline.models import TinyMLP
from transfer_pipeline.run import provenance

WIDE = 2048  # a TinyMLP of 2048 x 2048: a 16 MiB+ source, big enough to be hashed early (provenance.CACHED_FROM)


@pytest.fixture
def big_source(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "wide.safetensors"
    save_file(TinyMLP(in_features=WIDE, hidden=[WIDE], num_classes=5).state_dict(), path)
    assert path.stat().st_size >= provenance.CACHED_FROM
    return path


@pytest.fixture
def hashed(monkeypatch, tmp_path):
    """Every path sha256_file reads (the hash cache kept empty, so that each hash reads its file)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    seen = []
    real = provenance.sha256_file

    def counting(path):
        seen.append(path)
        return real(path)

    monkeypatch.setattr(provenance, "sha256_file", counting)
    return seen


MODEL = ("model=tiny_mlp", f"model.in_features={WIDE}", f"model.hidden=[{WIDE}]", "model.num_classes=5",
         "mapping=default", "freeze=none")


@pytest.mark.parametrize("relative", [False, True])
def test_a_big_source_is_hashed_once_from_the_start_of_the_run(run_pipeline, big_source, hashed, monkeypatch,
                                                              relative):
    started = []
    real = provenance.early_hash
    monkeypatch.setattr(provenance, "early_hash", lambda path: started.append(real(path)) or started[-1])
    given = big_source
    if relative:
        monkeypatch.chdir(big_source.parent)
        given = big_source.name
    summary, run_dir = run_pipeline(*MODEL, "mode=export", f"source.path={given}")
    assert summary["status"] == "exported" and (run_dir / "model.safetensors").is_file()
    assert len(started) == 1 and started[0] is not None and started[0].paths == [big_source]
    assert hashed == [big_source]  # the early hash was the one recorded: the file was not read twice
    assert summary["source_sha256"] == hashlib.sha256(big_source.read_bytes()).hexdigest()


def test_a_source_of_several_files_gets_the_hash_of_all_its_files_not_the_early_one(run_pipeline, big_source, hashed,
                                                                                   tmp_path, monkeypatch):
    from safetensors.torch import load_file

    sd = load_file(big_source)
    names = list(sd)
    save_file({k: sd[k] for k in names[:1]}, tmp_path / "a.safetensors")
    save_file({k: sd[k] for k in names[1:]}, tmp_path / "b.safetensors")
    index = index_with(tmp_path, {k: "a.safetensors" if i < 1 else "b.safetensors" for i, k in enumerate(names)})
    monkeypatch.setattr(provenance, "CACHED_FROM", 0)  # the index alone, small, hashed early: the plan must not keep it
    summary, _ = run_pipeline(*MODEL, "mode=plan", f"source.path={index}")
    files = [index, tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    assert sorted(hashed) == sorted([index, *files])  # the index early, then the index and its shards
    lines = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in files)
    assert summary["source_sha256"] == hashlib.sha256(lines.encode()).hexdigest()


def test_no_early_hash_where_the_path_is_not_a_big_local_file(tmp_path, big_source):
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 1000)
    (tmp_path / "folder").mkdir()
    for path in (None, "", "hf://org/name", "timm://resnet18", "pkg://transfer_pipeline/assets/x.safetensors",
                 str(tmp_path / "missing.safetensors"), str(tmp_path / "folder"), str(small)):
        assert provenance.early_hash(path) is None, path
    link = tmp_path / "link.safetensors"
    os.symlink(big_source, link)
    hashing = provenance.early_hash(str(link))
    assert hashing is not None and hashing.result() == hashlib.sha256(big_source.read_bytes()).hexdigest()
