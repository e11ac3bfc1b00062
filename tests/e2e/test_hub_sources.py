"""`source.path: hf://org/name[@rev][/file]` and `timm://name.tag` in whole runs (`python run.py` in a subprocess),
read from a hub cache the test writes in huggingface_hub's layout, with HF_HUB_OFFLINE=1: nothing is downloaded
(each test checks that the cache is byte for byte what it wrote)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from cache_models import hub_env, timm_hub_cache, write_hub_cache
from helpers import ROOT, read_json, run_cli
from transfer_pipeline.models.digits import PRETRAINED_0TO4
from transfer_pipeline.run.provenance import sha256_file

pytest.importorskip("huggingface_hub")
QUICK = ("trainer.epochs=1", "freeze.schedule=[]")


@pytest.fixture
def cache(tmp_path):
    """A hub cache holding acme/digits: the shipped digits CNN (the default run's source) and a config.json."""
    folder = tmp_path / "hub"
    write_hub_cache(folder, "acme/digits", {"model.safetensors": PRETRAINED_0TO4,
                                            "config.json": {"architectures": ["DigitsCNN"], "num_labels": 5}})
    return folder


def listing(folder):
    """Every path under `folder` with its size and target: what a download would change."""
    return sorted((str(p.relative_to(folder)), p.lstat().st_size, str(p.readlink()) if p.is_symlink() else "")
                  for p in folder.rglob("*"))


def hub_run(cache, *args, **kw):
    before = listing(cache)
    out = run_cli(*args, env=hub_env(cache), **kw)
    assert listing(cache) == before, "the hub cache changed: something was downloaded or written"
    return out


def test_a_cached_hf_source_trains_and_is_recorded(cache, tmp_path):
    out = hub_run(cache, "source.path=hf://acme/digits", *QUICK, f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 0, out.stdout + out.stderr
    summary = read_json(tmp_path / "run" / "summary.json")
    rec = summary["hub_source"]
    commit = next((cache / "models--acme--digits" / "snapshots").iterdir()).name
    assert rec["repo"] == "acme/digits" and rec["revision"] is None and rec["commit"] == commit
    assert rec["files"] == {"model.safetensors": sha256_file(PRETRAINED_0TO4)} == {"model.safetensors":
                                                                                  summary["source_sha256"]}
    assert rec["config"]["architectures"] == ["DigitsCNN"] and rec["config"]["num_labels"] == 5
    assert rec["pinned"] == f"hf://acme/digits@{commit}"
    assert summary["source"].startswith(f"hf://acme/digits (commit {commit[:12]}")
    assert read_json(tmp_path / "run" / "load_report.json")["loaded_fraction"] > 0.9
    log = (tmp_path / "run" / "run.log").read_text()
    assert f"hf://acme/digits: acme/digits at commit {commit[:12]}, model.safetensors" in log


def test_a_revision_pins_the_commit(cache, tmp_path):
    import torch
    from safetensors.torch import load_file

    sd = load_file(PRETRAINED_0TO4)
    old = write_hub_cache(cache, "acme/digits", {"model.safetensors": {k: v * 0 for k, v in sd.items()}},
                          revision="v0")
    for rev in ("v0", old.name):
        out = hub_run(cache, "mode=plan", f"source.path=hf://acme/digits@{rev}", f"hydra.run.dir={tmp_path / rev}")
        assert out.returncode == 0, out.stdout + out.stderr
        rec = read_json(tmp_path / rev / "summary.json")["hub_source"]
        assert rec["revision"] == rev and rec["commit"] == old.name
    assert torch.count_nonzero(load_file(old / "model.safetensors")["head.weight"]) == 0


def test_an_uncached_repo_is_one_message_naming_the_cache_and_the_command(cache, tmp_path):
    out = hub_run(cache, "mode=plan", "source.path=hf://acme/absent", f"hydra.run.dir={tmp_path / 'run'}")
    text = out.stdout + out.stderr
    assert out.returncode == 2 and "Traceback" not in text
    assert "acme/absent is not in the hub cache, and HF_HUB_OFFLINE is set, so nothing is downloaded" in text
    assert f"The cache is {cache}" in text and " download acme/absent" in text
    assert read_json(tmp_path / "run" / "summary.json")["status"] == "failed"


@pytest.mark.parametrize("path, message", [
    ("hf://", "no repo named"),
    ("hf://../x", "'../x' is not a hub repo id"),
    ("hf://acme/digits@", "the revision after '@' is empty"),
    ("hf://acme/digits/../../x", "the path inside the repo, '../../x', must name a file or folder of it: no '..'"),
    ("hf://acme/digits@v9", "revision 'v9' of acme/digits is not in the hub cache (cached: branches/tags main"),
])
def test_hostile_hub_paths_are_one_clear_message(cache, tmp_path, path, message):
    out = hub_run(cache, "mode=plan", f"source.path={path}", f"hydra.run.dir={tmp_path / 'run'}")
    text = out.stdout + out.stderr
    assert out.returncode == 2 and "Traceback" not in text
    assert message in text, text


def test_rerun_resolves_the_commit_the_run_used(cache, tmp_path):
    from safetensors.torch import load_file

    first = hub_run(cache, "source.path=hf://acme/digits", *QUICK, f"hydra.run.dir={tmp_path / 'run'}")
    assert first.returncode == 0, first.stdout + first.stderr
    was = read_json(tmp_path / "run" / "summary.json")
    # main moves on to another commit with other weights
    sd = load_file(PRETRAINED_0TO4)
    newer = write_hub_cache(cache, "acme/digits", {"model.safetensors": {k: v + 1 for k, v in sd.items()}})
    assert newer.name != was["hub_source"]["commit"]
    again = hub_run(cache, "--rerun", str(tmp_path / "run"), f"hydra.run.dir={tmp_path / 'again'}")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"--rerun: source.path=hf://acme/digits@{was['hub_source']['commit']}" in again.stderr
    now = read_json(tmp_path / "again" / "summary.json")
    assert now["hub_source"]["commit"] == was["hub_source"]["commit"]
    assert now["source_sha256"] == was["source_sha256"] and "source_changed" not in now
    assert now["val_acc"] == was["val_acc"]
    # the person's own source.path wins over the pin
    moved = hub_run(cache, "--rerun", str(tmp_path / "run"), "mode=plan", "source.path=hf://acme/digits@main",
                    f"hydra.run.dir={tmp_path / 'moved'}")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert read_json(tmp_path / "moved" / "summary.json")["hub_source"]["commit"] == newer.name
    # the run's commit gone from the cache: refused, naming it
    shutil.rmtree(cache / "models--acme--digits" / "snapshots" / was["hub_source"]["commit"])
    gone = hub_run(cache, "--rerun", str(tmp_path / "run"), f"hydra.run.dir={tmp_path / 'gone'}")
    text = gone.stdout + gone.stderr
    assert gone.returncode == 2 and "Traceback" not in text
    assert f"revision '{was['hub_source']['commit']}' of acme/digits is not in the hub cache" in text
    assert f"download acme/digits --revision {was['hub_source']['commit']}" in text


def test_a_timm_name_plans_into_a_timm_model(tmp_path):
    pytest.importorskip("timm")
    cache = tmp_path / "hub"
    snapshot, _ = timm_hub_cache(cache, "resnet18.a1_in1k")
    out = hub_run(cache, "mode=plan", "model=timm", "model.name=resnet18", "source.path=timm://resnet18.a1_in1k",
                  "mapping=default", "freeze=none", "mapping.exclude=[fc]", f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 0, out.stdout + out.stderr
    rec = read_json(tmp_path / "run" / "summary.json")["hub_source"]
    assert rec["repo"] == "timm/resnet18.a1_in1k" and rec["commit"] == snapshot.name
    assert rec["timm_pretrained_cfg"]["classifier"] == "fc" and rec["timm_pretrained_cfg"]["crop_pct"] == 0.95
    report = read_json(tmp_path / "run" / "load_report.json")
    assert sorted(report["missing"]) == ["fc.bias", "fc.weight"]
    assert "timm pretrained_cfg hf_hub_id=timm/resnet18.a1_in1k" in (tmp_path / "run" / "run.log").read_text()


def test_inspect_a_hub_path(cache):
    env = {**os.environ, **hub_env(cache)}
    out = subprocess.run([sys.executable, "-m", "transfer_pipeline.inspect", "hf://acme/digits"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert "models--acme--digits/snapshots/" in out.stdout and "format: safetensors" in out.stdout
    out = subprocess.run([sys.executable, "-m", "transfer_pipeline.inspect", "hf://acme/absent"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and "acme/absent is not in the hub cache" in out.stderr
