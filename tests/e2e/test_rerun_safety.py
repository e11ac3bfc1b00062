"""--rerun runs a folder's config again: a config is code, so one this user did not make needs
--trust-config; the file is read with limits; a resumed run and your own modules re-run anywhere."""

from __future__ import annotations

import os

from helpers import read_json, run_cli

PLAN = ("mode=plan",)


def test_a_planted_config_that_runs_a_command_is_refused(tmp_path):
    proof = tmp_path / "pwned"
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text(
        f"mode: plan\nmodel:\n  _target_: os.system\n  command: touch {proof}\n")
    out = run_cli("--rerun", str(tmp_path / "run"), f"hydra.run.dir={tmp_path / 'again'}")
    assert out.returncode == 2 and "was not written by a run of yours" in out.stderr
    assert "--trust-config" in out.stderr and "no SHA-256" in out.stderr
    assert not proof.exists() and not (tmp_path / "again").exists()


def test_a_config_edited_after_its_run_needs_trust(tmp_path):
    assert run_cli(*PLAN, f"hydra.run.dir={tmp_path / 'run'}").returncode == 0
    config = tmp_path / "run" / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("seed: 0", "seed: 1"))
    out = run_cli("--rerun", str(tmp_path / "run"), f"hydra.run.dir={tmp_path / 'a'}")
    assert out.returncode == 2 and "edited after the run" in out.stderr
    out = run_cli("--rerun", str(tmp_path / "run"), f"hydra.run.dir={tmp_path / 'b'}", "--trust-config")
    assert out.returncode == 0, out.stdout + out.stderr
    assert read_json(tmp_path / "b" / "summary.json")["seed"] == 1


def test_hostile_config_files_are_messages_not_hangs(tmp_path):
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    cases = {"laughs": (laughs.encode(), "uses YAML aliases"), "nul": (b"mode: plan\x00\n", "NUL bytes"),
             "broken": (b"mode: [plan\n", "is not valid YAML at line 2"),
             "latin1": (b"mode: \xe9\n", "is not UTF-8"), "list": (b"- 1\n", "holds no config")}
    for name, (content, message) in cases.items():
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_bytes(content)
        out = run_cli("--rerun", str(tmp_path / name), f"hydra.run.dir={tmp_path / (name + '_again')}",
                      "--trust-config", timeout=60)
        assert out.returncode == 2 and message in out.stderr, (name, out.stderr)
        assert "Traceback" not in out.stderr, name


def test_a_fifo_as_the_config_is_refused_without_blocking(tmp_path):
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    os.mkfifo(tmp_path / "run" / ".hydra" / "config.yaml")
    out = run_cli("--rerun", str(tmp_path / "run"), "--trust-config", timeout=60)
    assert out.returncode == 2 and "FIFO" in out.stderr


def test_a_resumed_run_reruns_afresh(tmp_path):
    first = run_cli("trainer.epochs=1", "freeze.schedule=[]", f"hydra.run.dir={tmp_path / 'run'}")
    assert first.returncode == 0, first.stdout + first.stderr
    config = tmp_path / "run" / ".hydra" / "config.yaml"
    text = config.read_text()
    assert "resume: null" in text
    # as a resumed run's folder holds it: the resume key set in its own config
    config.write_text(text.replace("resume: null", "resume: auto"))
    summary = read_json(tmp_path / "run" / "summary.json")
    import hashlib
    import json

    summary["config_sha256"] = hashlib.sha256(config.read_bytes()).hexdigest()
    (tmp_path / "run" / "summary.json").write_text(json.dumps(summary))
    again = run_cli("--rerun", str(tmp_path / "run"), f"hydra.run.dir={tmp_path / 'again'}")
    assert again.returncode == 0, again.stdout + again.stderr
    assert read_json(tmp_path / "again" / "summary.json")["status"] == "completed"


def test_a_config_dir_run_reruns_from_any_directory(tmp_path):
    conf = tmp_path / "my_conf"
    (conf / "model").mkdir(parents=True)
    (conf / "my_models.py").write_text(
        "from transfer_pipeline.models import DigitsCNN\n\n"
        "def wide_cnn(num_classes=5):\n    return DigitsCNN(num_classes=num_classes)\n")
    (conf / "model" / "mine.yaml").write_text("_target_: my_models.wide_cnn\nnum_classes: 5\n")
    first = run_cli("--config-dir", str(conf), "model=mine", *PLAN, f"hydra.run.dir={tmp_path / 'run'}", cwd=conf)
    assert first.returncode == 0, first.stdout + first.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = run_cli("--rerun", str(tmp_path / "run"), f"hydra.run.dir={tmp_path / 'again'}", cwd=elsewhere)
    assert again.returncode == 0, again.stdout + again.stderr
    assert str(conf) in read_json(tmp_path / "run" / "summary.json")["code_dirs"]
