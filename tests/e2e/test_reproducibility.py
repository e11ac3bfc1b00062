"""What a run folder records to redo the run: here, the git state of the configs' own repository."""

from __future__ import annotations

import subprocess

from helpers import read_json, run_cli


def git(folder, *args):
    subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"})


def test_the_summary_has_the_commit_and_dirty_flag_of_the_users_config_repository(tmp_path):
    repo = tmp_path / "my_experiments"
    (repo / "experiment").mkdir(parents=True)
    (repo / "experiment" / "mine.yaml").write_text("# @package _global_\ntrainer:\n  epochs: 2\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "mine")
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()

    run = run_cli("--config-dir", str(repo), "experiment=mine", "mode=plan", f"hydra.run.dir={tmp_path / 'clean'}")
    assert run.returncode == 0, run.stderr[-2000:]
    recorded = {r["path"]: r for r in read_json(tmp_path / "clean" / "summary.json")["config_git"]}
    assert recorded[str(repo)] == {"path": str(repo), "commit": head, "dirty": False}

    (repo / "experiment" / "mine.yaml").write_text("# @package _global_\ntrainer:\n  epochs: 3\n")
    run = run_cli("--config-dir", str(repo), "experiment=mine", "mode=plan", f"hydra.run.dir={tmp_path / 'dirty'}")
    assert run.returncode == 0, run.stderr[-2000:]
    recorded = {r["path"]: r for r in read_json(tmp_path / "dirty" / "summary.json")["config_git"]}
    assert recorded[str(repo)]["dirty"] is True and recorded[str(repo)]["commit"] == head


def test_configs_outside_any_repository_record_no_commit(tmp_path):
    folder = tmp_path / "loose"
    (folder / "experiment").mkdir(parents=True)
    (folder / "experiment" / "mine.yaml").write_text("# @package _global_\ntrainer:\n  epochs: 2\n")
    run = run_cli("--config-dir", str(folder), "experiment=mine", "mode=plan", f"hydra.run.dir={tmp_path / 'run'}")
    assert run.returncode == 0, run.stderr[-2000:]
    recorded = {r["path"]: r for r in read_json(tmp_path / "run" / "summary.json")["config_git"]}
    assert recorded[str(folder)] == {"path": str(folder), "commit": None, "dirty": None}


def test_a_big_checkpoints_hash_is_cached_by_path_size_and_times(tmp_path, monkeypatch):
    import hashlib
    import json
    import os

    from transfer_pipeline.run import provenance

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(provenance.CACHED_FROM + 10))
    real = hashlib.sha256(big.read_bytes()).hexdigest()
    assert provenance.sha256_file(big) == real
    cache = json.loads(provenance.hash_cache_path().read_text())
    assert cache[str(big.resolve())]["sha256"] == real
    # the second run answers from the cache: a planted value comes back, the file is not read
    cache[str(big.resolve())]["sha256"] = "planted"
    provenance.hash_cache_path().write_text(json.dumps(cache))
    assert provenance.sha256_file(big) == "planted"
    # the file changes (same size): its times change, so it is hashed again
    data = bytearray(big.read_bytes())
    data[0] ^= 1
    big.write_bytes(bytes(data))
    assert provenance.sha256_file(big) == hashlib.sha256(bytes(data)).hexdigest()
    # a corrupt cache is no error
    provenance.hash_cache_path().write_text("{not json")
    assert provenance.sha256_file(big) == hashlib.sha256(bytes(data)).hexdigest()
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 100)
    provenance.sha256_file(small)
    assert str(small.resolve()) not in json.loads(provenance.hash_cache_path().read_text())


def test_an_unwritable_cache_folder_still_gives_the_hash(tmp_path, monkeypatch):
    import hashlib
    import os

    from transfer_pipeline.run import provenance

    blocker = tmp_path / "file_not_folder"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # the cache folder cannot be made under a file
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(provenance.CACHED_FROM + 1))
    assert provenance.sha256_file(big) == hashlib.sha256(big.read_bytes()).hexdigest()


SHIPPED = "transfer_pipeline/assets/digits_cnn_0to4.safetensors"


def test_a_run_reruns_from_its_own_folder_to_bitwise_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    common = ("trainer.deterministic=true", "trainer.epochs=2", "freeze.schedule=[]", "trainer.progress=false",
              "optim.lr=0.02")
    first = run_cli(*common, f"hydra.run.dir={tmp_path / 'first'}")
    assert first.returncode == 0, first.stderr[-2000:]
    for name, args in (("rerun", ("--rerun", str(tmp_path / "first"))),
                       ("config_path", ("--config-path", str(tmp_path / "first" / ".hydra"), "--config-name", "config"))):
        again = run_cli(*args, f"hydra.run.dir={tmp_path / name}")
        assert again.returncode == 0, again.stderr[-2000:]
        a, b = load_file(tmp_path / "first" / "model.safetensors"), load_file(tmp_path / name / "model.safetensors")
        assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a), name
        summary = read_json(tmp_path / name / "summary.json")
        assert summary["rerun_of"] == str(tmp_path / "first") and not summary.get("source_changed")
        assert summary["seed"] == 0 and summary["device_name"] and len(summary["source_sha256"]) == 64
    # a re-run takes overrides on top, like any run
    changed = run_cli("--rerun", str(tmp_path / "first"), "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'changed'}")
    assert changed.returncode == 0 and read_json(tmp_path / "changed" / "summary.json")["epochs"] == 1


def test_a_rerun_whose_source_changed_warns_with_both_hashes(tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from helpers import ROOT

    source = tmp_path / "source.safetensors"
    shutil.copy(ROOT / SHIPPED, source)
    first = run_cli(f"source.path={source}", "trainer.epochs=1", "freeze.schedule=[]", "mode=plan",
                    f"hydra.run.dir={tmp_path / 'first'}")
    assert first.returncode == 0, first.stderr[-2000:]
    before = read_json(tmp_path / "first" / "summary.json")["source_sha256"]
    weights = load_file(source)
    weights["stem.0.weight"] = weights["stem.0.weight"] + 0.01 * torch.ones_like(weights["stem.0.weight"])
    save_file(weights, source)
    again = run_cli("--rerun", str(tmp_path / "first"), f"hydra.run.dir={tmp_path / 'again'}")
    assert again.returncode == 0, again.stderr[-2000:]
    summary = read_json(tmp_path / "again" / "summary.json")
    assert summary["source_changed"] is True and summary["source_sha256"] != before
    out = again.stdout + again.stderr
    assert "The source checkpoint is not the one" in out and before in out and summary["source_sha256"] in out


def test_rerun_of_a_folder_without_its_config_is_refused(tmp_path):
    result = run_cli("--rerun", str(tmp_path))
    assert result.returncode == 2 and "--rerun needs a run folder holding .hydra/config.yaml" in result.stderr


def test_rerun_of_a_config_that_does_not_fit_the_schema_names_the_key(tmp_path):
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    config = tmp_path / "run" / ".hydra" / "config.yaml"
    config.write_text("mode: plan\noptim:\n  lrr: 0.1\n")  # edited by hand, or written by another version
    result = run_cli("--rerun", str(tmp_path / "run"), f"hydra.run.dir={tmp_path / 'again'}", "--trust-config")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "lrr" in result.stdout + result.stderr and "Traceback" not in result.stdout + result.stderr
    config.write_text("mode: plan\n")  # the model is missing
    result = run_cli("--rerun", str(tmp_path / "run"), f"hydra.run.dir={tmp_path / 'empty'}", "--trust-config")
    assert result.returncode == 2 and "model: has no value" in result.stdout + result.stderr
    config.write_text("")  # empty: no config at all
    result = run_cli("--rerun", str(tmp_path / "run"), f"hydra.run.dir={tmp_path / 'empty2'}", "--trust-config")
    assert result.returncode == 2 and "holds no config" in result.stderr
