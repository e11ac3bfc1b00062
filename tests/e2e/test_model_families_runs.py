"""Models by name through `python run.py`: the class count from the data or the weights, and mistakes at the key."""

from __future__ import annotations

from helpers import run_cli

DIGITS = ("model=custom", "model._target_=transfer_pipeline.models.DigitsCNN")


def test_a_model_by_name_takes_the_data_class_count_and_export_takes_the_weights(run_pipeline, tmp_path):
    summary, run_dir = run_pipeline(*DIGITS, "data.classes=[0,1,2]", "trainer.epochs=4", run_dir=tmp_path / "train")
    assert summary["status"] == "completed" and summary["num_classes"] == 3
    assert summary["num_classes_from"] == "the data's classes"
    exported, _ = run_pipeline(*DIGITS, "mode=export", f"source.path={run_dir / 'model.safetensors'}",
                               "mapping=default", run_dir=tmp_path / "export")  # the 3 classes of the weights' metadata
    assert exported["status"] == "exported" and exported["num_classes_from"] == "the classes the weights were trained on"
    assert exported["loaded_fraction"] == 1.0


def test_mistakes_in_a_model_by_name_are_one_message_and_exit_2(tmp_path):
    cases = [(("model=torchvision", "model.name=resnt18"), ["model.name='resnt18'", "resnet18"]),
             (("model=torchvision", "model.name=resnet18", "+model.in_channels=1"),
              ["model.in_channels", "It takes:", "num_classes"]),
             (("model=timm", "model.name=resnet18", "+model.drop_rat=0.1"), ["model.drop_rat", "drop_rate"]),
             (("model=torchvision",), ["model.name"])]  # ??? in the group file: it must be given
    for i, (overrides, wanted) in enumerate(cases):
        proc = run_cli(*overrides, "mode=plan", f"hydra.run.dir={tmp_path / str(i)}")
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2, (overrides, out[-2000:])
        assert "Traceback" not in out and all(w in out for w in wanted), (overrides, out[-2000:])
