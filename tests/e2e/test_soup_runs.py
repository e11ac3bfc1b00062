"""mode=soup (run/souping.py): a sweep's fine-tuned weights averaged, uniform and greedy, evaluated and exported;
and the sweeps that must be refused (another source, another model, too few jobs)."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import compose_config
from transfer_pipeline.errors import UserError

TUNE = ("freeze=none", "data.shift=rotated", "trainer.epochs=2", "trainer.limit_train_batches=6")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A sweep folder as `-m` leaves it: job folders 0, 1, 2 (three learning rates)."""
    from transfer_pipeline.run.lifecycle import run

    folder = tmp_path_factory.mktemp("sweep")
    for i, lr in enumerate((0.003, 0.01, 0.03)):
        assert run(compose_config(*TUNE, f"optim.lr={lr}"), folder / str(i))["status"] == "completed"
    return folder


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_the_greedy_soup_is_no_worse_than_its_best_ingredient_and_the_uniform_soup_is_the_mean(run_pipeline, sweep,
                                                                                               tmp_path):
    summary, out = run_pipeline("mode=soup", f"soup.sweep={sweep}", "data.shift=rotated", run_dir=tmp_path / "greedy")
    assert summary["status"] == "souped" and summary["soup"]["ingredients"] == ["0", "1", "2"]
    rows = read_rows(out / "soup.csv")
    assert [r["soup"] for r in rows] == ["ingredient"] * 3 + ["uniform", "greedy"]
    assert set(rows[0]) == {"soup", "jobs", "val_loss", "val_acc", "shifted_loss", "shifted_acc"}
    singles = {r["jobs"]: float(r["val_acc"]) for r in rows[:3]}
    greedy = summary["soup"]["greedy"]
    assert singles[greedy[0]] == max(singles.values())  # the soup starts from the best job
    assert float(rows[-1]["val_acc"]) >= max(singles.values()) and summary["val_acc"] == float(rows[-1]["val_acc"])
    written = load_file(out / "model.safetensors")
    jobs = [load_file(sweep / name / "model.safetensors") for name in greedy]
    w = "block1.0.weight"
    assert torch.allclose(written[w], sum(j[w] for j in jobs) / len(jobs), atol=1e-6)
    uniform, uniform_dir = run_pipeline("mode=soup", f"soup.sweep={sweep}", "soup.export=uniform",
                                        run_dir=tmp_path / "uniform")
    every = [load_file(sweep / str(i) / "model.safetensors") for i in range(3)]
    mean = load_file(uniform_dir / "model.safetensors")
    for k, t in mean.items():
        if t.is_floating_point():
            assert torch.allclose(t, sum(e[k] for e in every) / 3, atol=1e-6), k
        else:
            assert torch.equal(t, every[0][k])  # num_batches_tracked: the first job's
    assert uniform["soup"]["export"] == "uniform" and "shifted_acc" not in uniform  # no data.shift given here


def test_jobs_that_did_not_complete_are_left_out_and_too_few_is_an_error(run_pipeline, sweep, tmp_path, caplog):
    folder = tmp_path / "sweep"
    for name in ("0", "1"):
        shutil.copytree(sweep / name, folder / name)
    (folder / "2").mkdir()
    (folder / "2" / "summary.json").write_text(json.dumps({"status": "failed", "error": "NaN loss"}))
    summary, _ = run_pipeline("mode=soup", f"soup.sweep={folder}", run_dir=tmp_path / "a")
    assert summary["soup"]["ingredients"] == ["0", "1"] and "left out 1 job(s) that did not complete: 2 (failed)" \
        in caplog.text
    shutil.rmtree(folder / "1")
    with pytest.raises(UserError, match=r"1 completed job\(s\) with weights; a soup needs at least 2 \(left out: 2 "):
        run_pipeline("mode=soup", f"soup.sweep={folder}", run_dir=tmp_path / "b")
    with pytest.raises(UserError, match="holds no job folders"):
        run_pipeline("mode=soup", f"soup.sweep={tmp_path / 'a'}", run_dir=tmp_path / "c")


def test_a_job_of_another_source_or_another_model_is_refused_by_name(run_pipeline, sweep, tmp_path):
    folder = tmp_path / "sweep"
    shutil.copytree(sweep, folder)
    record = json.loads((folder / "1" / "summary.json").read_text())
    (folder / "1" / "summary.json").write_text(json.dumps({**record, "source_sha256": "0" * 64}))
    with pytest.raises(UserError, match=r"job .*/1 fine-tuned from .*not from this run's source"):
        run_pipeline("mode=soup", f"soup.sweep={folder}", run_dir=tmp_path / "a")
    (folder / "1" / "summary.json").write_text(json.dumps(record))
    state = load_file(folder / "2" / "model.safetensors")
    save_file({**state, "head.bias": torch.zeros(3)}, folder / "2" / "model.safetensors")
    with pytest.raises(UserError, match=r"soup.sweep job 2: .*head.bias is \[3\], this model's \[5\]"):
        run_pipeline("mode=soup", f"soup.sweep={folder}", run_dir=tmp_path / "b")
    with pytest.raises(UserError, match="mode=soup with adapters"):
        run_pipeline("mode=soup", f"soup.sweep={folder}", "adapters=lora", run_dir=tmp_path / "c")


@pytest.mark.parametrize("overrides, message", [
    (("mode=soup",), "mode=soup needs soup.sweep"),
    (("soup.sweep=x",), "soup.sweep is set but mode is not soup"),
])
def test_soup_settings_are_checked(overrides, message):
    with pytest.raises(UserError, match=message):
        compose_config(*overrides)
