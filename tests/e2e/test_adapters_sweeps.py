"""`python run.py -m` sweeps over the adapters: each job gets its own rank and targets (in its adapter/, its
summary.json and the sweep's summary), and a job with a bad rank fails alone, by name."""

from __future__ import annotations

import csv
import re

import pytest
import yaml

from helpers import read_json, run_cli

FAST = ("trainer.epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.progress=false")
TARGETS = {"[block2]": ["block2.0"], "[stem,block1]": ["stem.0", "block1.0"]}  # selectors -> the layers they resolve to
CONVS = ["stem.0", "block1.0", "block2.0"]  # DigitsCNN's layers that can take an adapter (head aside)


def rows(sweep):
    return list(csv.DictReader((sweep / "sweep_summary.csv").open()))


def overrides(job_dir) -> dict[str, str]:
    return dict(o.split("=", 1) for o in yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()))


@pytest.mark.slow
def test_a_sweep_over_rank_and_targets_gives_each_job_its_own_adapter(tmp_path):
    sweep = tmp_path / "s"
    out = run_cli("-m", "adapters=lora", "adapters.rank=2,4", "adapters.targets=[block2],[stem,block1]", *FAST,
                  f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    table = rows(sweep)
    assert {"job", "adapters.rank", "adapters.targets", "status"} <= set(table[0])
    assert sorted((r["adapters.rank"], r["adapters.targets"]) for r in table) == \
        sorted((rank, t) for rank in ("2", "4") for t in TARGETS)  # one row per job, with its rank
    for r in table:
        job = sweep / r["job"]
        assert r["status"] == "completed", r
        asked = overrides(job)
        assert (asked["adapters.rank"], asked["adapters.targets"]) == (r["adapters.rank"], r["adapters.targets"])
        config = read_json(job / "adapter" / "adapter_config.json")  # peft's own file
        assert config["r"] == int(r["adapters.rank"]) and config["peft_type"] == "LORA"
        assert config["modules_to_save"] == ["head"]
        want = TARGETS[r["adapters.targets"]]
        assert [c for c in CONVS if re.fullmatch(config["target_modules"], c)] == sorted(want, key=CONVS.index)
        assert (job / "adapter" / "adapter_model.safetensors").stat().st_size > 0
        adapters = read_json(job / "summary.json")["adapters"]
        assert adapters["rank"] == int(r["adapters.rank"]) and adapters["targets"] == want
    # the adapter's size follows the rank: rank 4 has twice the adapter parameters of rank 2, same targets
    params = {(r["adapters.rank"], r["adapters.targets"]): read_json(sweep / r["job"] / "summary.json")["adapters"]
              for r in table}
    for t in TARGETS:
        assert params[("4", t)]["adapter_params"] == 2 * params[("2", t)]["adapter_params"]


@pytest.mark.slow
def test_a_bad_rank_fails_its_job_by_name_and_the_others_complete(tmp_path):
    sweep = tmp_path / "s"
    out = run_cli("-m", "adapters=lora", "adapters.rank=0,4", "adapters.targets=[block2]", *FAST,
                  f"hydra.sweep.dir={sweep}")
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]  # a job did not complete: a config mistake
    text = out.stdout + out.stderr
    assert "Traceback" not in text
    assert "adapters.rank=0: must be a whole number >= 1" in text
    assert "1 job(s) did not complete: 0 (failed)" in text  # the job, by its number
    table = {r["adapters.rank"]: r for r in rows(sweep)}
    assert set(table) == {"0", "4"}
    bad, good = table["0"], table["4"]
    assert bad["status"] == "failed" and "adapters.rank=0" in bad["error"] and bad["job"] == "0"
    assert read_json(sweep / "0" / "summary.json")["status"] == "failed"
    assert not (sweep / "0" / "adapter").exists()
    assert good["status"] == "completed" and good["error"] == ""  # the job after the failed one still ran
    assert read_json(sweep / good["job"] / "adapter" / "adapter_config.json")["r"] == 4
