"""trainer.strategy=fsdp loads once: every rank builds the target on the meta device, rank 0 applies the planned
load from the source's memory map and broadcasts it into the shards (run/sharded_load.py). The fresh tensors
(a new head) get the one-process run's seeded init, and rank 1 reads no tensor of the source."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from helpers import read_json, run_cli
from test_fsdp_runs import SOURCE
from test_training_runs import torchrun


@pytest.mark.slow
def test_fsdp_load_is_rank_0s_broadcast_and_a_new_head_starts_as_in_one_process(tmp_path):
    # optim.lr=0 and one step: the written weights are those the load gave (AdamW at lr 0 changes nothing), gathered
    # from the shards; the head is left out of the load, so it is the fresh, seeded init of its module
    common = ("device=cpu", "trainer.epochs=1", "freeze.schedule=[]", "trainer.limit_train_batches=1", "optim.lr=0",
              "freeze.bn=frozen", "mapping.exclude=[head.*]", "trainer.progress=false")
    two = torchrun(*common, "trainer.strategy=fsdp", f"hydra.run.dir={tmp_path / 'fsdp'}")
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_cli(*common, f"hydra.run.dir={tmp_path / 'one'}", env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = load_file(tmp_path / "fsdp" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise, the new head included
    source = load_file(SOURCE)
    assert not torch.equal(a["head.weight"], source["head.weight"])  # fresh, not loaded
    assert all(torch.equal(a[k], source[k]) for k in a if not k.startswith("head."))  # BN statistics too
    fsdp, single = read_json(tmp_path / "fsdp" / "summary.json"), read_json(tmp_path / "one" / "summary.json")
    assert fsdp["fsdp"]["load"] == "rank 0, broadcast"
    # counted at the source's reader on every rank: rank 0 read each loaded tensor once, rank 1 nothing
    loaded = sum(t.numel() * t.element_size() for k, t in source.items() if not k.startswith("head."))
    assert fsdp["fsdp"]["source_bytes_read"] == [loaded, 0]
    for key in ("loaded_tensors", "missing_tensors", "loaded_fraction", "trainable_params", "frozen_params"):
        assert fsdp[key] == single[key], key
    # parameters + gradients + optimizer state per rank after the first step: the shards, about half of the whole
    rows = fsdp["fsdp"]["local_bytes"]
    whole = sum(t.numel() * t.element_size() for k, t in a.items() if "running" not in k and "num_batches" not in k)
    assert len(rows) == 2 and all(0.4 * whole < row["parameters"] < 0.6 * whole for row in rows)
    assert sum(row["parameters"] for row in rows) == whole
    count = sum(not k.startswith("head.") for k in source)
    assert f"source tensors (bytes) read per rank: rank 0: {count} ({loaded:,}), rank 1: 0 (0)" in two.stdout


@pytest.mark.slow
def test_fsdp_with_mapping_verify_loads_on_every_rank_as_before(tmp_path):
    result = torchrun("device=cpu", "trainer.strategy=fsdp", "trainer.epochs=1", "freeze.schedule=[]",
                      "trainer.limit_train_batches=1", "mapping.verify.enabled=true", "trainer.progress=false",
                      f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "every rank loads the whole model before sharding (mapping.verify" in result.stdout + result.stderr
    assert "load" not in read_json(tmp_path / "summary.json")["fsdp"]
