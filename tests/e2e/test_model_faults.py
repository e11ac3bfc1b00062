"""A model whose forward has a bug is told so (the error, where it was raised), not blamed on the data's
shape or mapping.verify.input_shape."""

from __future__ import annotations

import pytest

from transfer_pipeline.errors import UserError


def test_a_target_model_that_raises_is_named_with_where(run_pipeline, tmp_path):
    with pytest.raises(UserError) as got:
        run_pipeline("model._target_=helpers.raising_model", "source=none", "mapping=default", "freeze=none",
                     "trainer.epochs=1", run_dir=tmp_path / "r")
    message = str(got.value)
    assert "its forward raised KeyError" in message and "helpers.py" in message and "(forward)" in message
    assert "data.channels" not in message and "error in the model's code" in message


def test_a_shape_problem_is_still_blamed_on_the_shape(run_pipeline, tmp_path):
    with pytest.raises(UserError, match="data.channels"):
        run_pipeline("model.in_channels=3", "source=none", "mapping=default", "freeze=none", "trainer.epochs=1",
                     run_dir=tmp_path / "r")


def test_verify_names_a_source_model_that_raises(run_pipeline, tmp_path):
    with pytest.raises(UserError, match=r"mapping.verify: the source model \(Buggy\): its forward raised KeyError"):
        run_pipeline("mode=export", "+source.model={_target_: helpers.raising_model}", "source.path=null",
                     "model._target_=helpers.raising_model", "+model.fail=false", "mapping=default", "freeze=none",
                     "mapping.verify.enabled=true", "mapping.verify.input_shape=[2,1,8,8]", run_dir=tmp_path / "v")
