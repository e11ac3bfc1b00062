"""What a checkpoint holds: NaN/inf weights are an error naming the tensors (unless a key allows them),
raised by the Python API before the model is touched.

The same checks in whole runs (casts that lose information, only what is loaded, nothing written):
tests/e2e/test_source_runs.py."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import transfer_pipeline as tp
from transfer_pipeline.errors import UserError
from transfer_pipeline.models import DigitsCNN
from transfer_pipeline.models.digits import PRETRAINED_0TO4


@pytest.fixture
def sd():
    return load_file(PRETRAINED_0TO4)


def test_the_api_refuses_before_touching_the_model(sd):
    sd["stem.0.weight"][0] = float("nan")
    model = DigitsCNN(num_classes=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match="hold NaN or inf: stem.0.weight"):
        tp.load_weights(model, sd)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    tp.load_weights(model, sd, allow_nonfinite=True)
    assert torch.isnan(model.stem[0].weight[0]).all()
