"""transfer_pipeline.build in whole runs: a model written in YAML trains, and a model that cannot take the
data (or returns a tuple) is told which key to change on the first batch."""

from __future__ import annotations

import pytest

from transfer_pipeline.errors import UserError


def test_yaml_sequential_model_trains_end_to_end(run_pipeline):
    summary, _ = run_pipeline("experiment=from_scratch", "model=tiny_mlp", "~model.in_features", "~model.hidden",
                              "~model.num_classes", "model._target_=torch.nn.Sequential",
                              "+model._args_=[{_target_: torch.nn.Flatten}, "
                              "{_target_: torch.nn.Linear, in_features: 64, out_features: 5}]", "trainer.epochs=1")
    assert summary["status"] == "completed"


@pytest.mark.parametrize(("overrides", "match"), [
    (("model.in_channels=3",), r"input of shape \(2, 1, 8, 8\).*data\.channels \(now 1; 3 for RGB models\)"),
    (("data.image_size=4", "+model.widths=[16,32,64,64]"), r"data\.image_size \(now 4\)"),
])
def test_a_model_that_cannot_take_the_data_fails_on_the_first_batch_naming_the_keys(run_pipeline, overrides, match):
    with pytest.raises(UserError, match=match):
        run_pipeline("source=none", "mapping=default", "freeze=none", *overrides)


def test_a_model_returning_a_tuple_is_told_what_is_needed(run_pipeline):
    with pytest.raises(UserError, match=r"model: returns a tuple of 2 \(Tensor, Tensor\), not a tensor of logits\. "
                                        r"Say where the logits are with model\.output=0\."):
        run_pipeline("experiment=from_scratch", "model=tiny_mlp", "~model.in_features", "~model.hidden",
                     "~model.num_classes", "model._target_=helpers.tuple_model")
    summary, _ = run_pipeline("experiment=from_scratch", "model=tiny_mlp", "~model.in_features", "~model.hidden",
                              "~model.num_classes", "model._target_=helpers.tuple_model", "+model.output=0",
                              "trainer.epochs=1")
    assert summary["status"] == "completed"  # the logits are the tuple's first item
