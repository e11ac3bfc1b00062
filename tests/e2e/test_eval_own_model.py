"""mode=eval and mode=predict train nothing: your own model needs no freeze=none for them."""

from __future__ import annotations

OWN = ("model._target_=helpers.raising_model", "+model.fail=false")


def test_eval_and_predict_of_your_own_model_with_the_default_freeze_group(run_pipeline, tmp_path):
    trained, run_dir = run_pipeline(*OWN, "source=none", "mapping=default", "freeze=none", "trainer.epochs=2",
                                    run_dir=tmp_path / "train")
    weights = run_dir / "model.safetensors"
    for mode, ending in (("eval", "evaluated"), ("predict", "predicted")):  # the default freeze group names
        summary, _ = run_pipeline(*OWN, f"mode={mode}", f"source.path={weights}", "mapping=default",  # block2 and
                                  run_dir=tmp_path / mode)  # head, which this model lacks
        assert summary["status"] == ending and "trainable_params" not in summary
