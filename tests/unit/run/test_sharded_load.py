"""trainer.strategy=fsdp's rank-0 load (run/sharded_load.py): the pure parts. The runs under torchrun are in
tests/e2e/test_fsdp_load.py."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from transfer_pipeline.build import build_model
from transfer_pipeline.run.sharded_load import count_reads, local_bytes, release, resident_now, why_not

MLP = {"_target_": "transfer_pipeline.models.TinyMLP", "in_features": 4, "hidden": [3], "num_classes": 2}


def test_count_reads_counts_each_source_tensor_once_with_its_bytes():
    tensors = {"a": torch.zeros(3, 4), "b": torch.zeros(5, dtype=torch.float16)}
    weights = SimpleNamespace(get=tensors.__getitem__)
    reads = count_reads(weights)
    assert (reads.tensors, reads.bytes) == (0, 0)
    for name in ("a", "b", "a"):  # the value check and the load both read "a"
        assert weights.get(name) is tensors[name]
    assert (reads.tensors, reads.bytes) == (2, 3 * 4 * 4 + 5 * 2)


def test_local_bytes_of_parameters_gradients_and_optimizer_state():
    model = nn.Linear(4, 3)  # 15 parameters
    model.bias.requires_grad_(False)
    opt = torch.optim.AdamW([model.weight], lr=0.1)
    assert local_bytes(model, opt) == {"parameters": 60, "gradients": 0, "optimizer": 0, "total": 60}
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    # the weight's gradient and AdamW's exp_avg and exp_avg_sq (its 0-d step is not counted)
    assert local_bytes(model, opt) == {"parameters": 60, "gradients": 48, "optimizer": 96, "total": 204}


def run(model, weights=object(), verify=False, group=SimpleNamespace(rank=0, world=2)):
    return SimpleNamespace(group=group, weights=weights, model=model,
                           cfg=SimpleNamespace(mapping=SimpleNamespace(verify=SimpleNamespace(enabled=verify))))


def test_why_not_says_when_every_rank_loads_the_whole_model():
    meta = build_model(MLP, meta=True)
    assert why_not(run(meta)) is None  # a source, a meta build, under torchrun: rank 0 loads
    assert why_not(run(meta, group=None)) == "one process"
    assert "no source" in why_not(run(meta, weights=None))
    assert "mapping.verify" in why_not(run(meta, verify=True))
    assert "built normally" in why_not(run(build_model(MLP)))


def test_release_lets_the_source_memory_map_go(tmp_path):
    # rank 0 after the broadcast: the shards hold copies, and the mapped file pages would stay in its memory
    import gc

    import pytest
    from safetensors.torch import save_file

    from transfer_pipeline.sources.read import read_path

    path = tmp_path / "big.safetensors"
    save_file({"w": torch.ones(256, 1024)}, path)
    weights = read_path(path)
    counted = count_reads(weights)  # as the run wraps it
    assert float(weights.get("w").sum()) == 256 * 1024 and counted.tensors == 1
    mapped = lambda: str(path) in open("/proc/self/maps").read()  # noqa: E731
    assert mapped()
    release(weights)
    gc.collect()
    assert not mapped()
    with pytest.raises(RuntimeError, match="read after the sharded load released"):
        weights.get("w")
    assert resident_now() > 0
