"""Adapters with the engine's switches and under torchrun: what the config accepts, and which rank writes."""

from __future__ import annotations

import pytest
import torch

from transfer_pipeline.errors import UserError


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_precision_16_compile_and_channels_last_are_accepted_with_adapters(compose, method):
    cfg = compose(f"adapters={method}", "trainer.precision=16", "trainer.compile=true", "trainer.channels_last=true")
    assert (cfg.trainer.precision, cfg.trainer.compile, cfg.trainer.channels_last) == ("16", True, True)
    with pytest.raises(UserError, match=r"^trainer\.cache_features with adapters .* the adapters change the "
                                        "backbone's features"):
        compose(f"adapters={method}", "trainer.cache_features=true")  # still refused


def test_only_rank_0_writes_the_adapter_and_the_merged_weights(compose, tmp_path):
    from transfer_pipeline.run.adapting import finish
    from transfer_pipeline.run.state import Run
    from transfer_pipeline.training.distributed import Group
    from transfer_pipeline.training.engine import Engine

    r = Run(compose("adapters=lora"), tmp_path, {})
    r.engine = Engine(torch.device("cpu"), group=Group(rank=1, world=2, local_rank=1, backend="gloo"))
    finish(r, "last")  # rank 1: nothing to merge, nothing written (no peft model is even needed)
    assert list(tmp_path.iterdir()) == []
