"""What eval and predict write is true and harmless: classes matched by name with the weights',
and predictions.csv cells that a spreadsheet would run as formulas written as text."""

from __future__ import annotations

import csv
import json

import pytest
from safetensors.torch import load_file, save_file

from transfer_pipeline.errors import UserError
from transfer_pipeline.training.predict import spreadsheet_safe

TRAIN = ("trainer.epochs=4", "freeze.schedule=[]", "trainer.progress=false")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from helpers import compose_config

    from transfer_pipeline.run.lifecycle import run

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    assert run(compose_config(*TRAIN), run_dir)["status"] == "completed"
    return run_dir / "model.safetensors"


@pytest.mark.parametrize("mode", ["eval", "predict"])
@pytest.mark.parametrize(("classes", "how"), [("[9,8,7,6,5]", "the same classes in another order"),
                                             ("[0,1,2,3,4]", "other classes")])
def test_data_with_other_classes_than_the_weights_is_refused(run_pipeline, tmp_path, trained, mode, classes, how):
    with pytest.raises(UserError, match=rf"mode={mode}: the weights were trained on the classes \[5, 6, 7, 8, 9\] "
                                        rf"and the data has {how}"):
        run_pipeline(f"mode={mode}", f"source.path={trained}", "mapping=default", f"data.classes={classes}",
                     run_dir=tmp_path / "x")


def test_the_same_classes_evaluate(run_pipeline, tmp_path, trained):
    summary, _ = run_pipeline("mode=eval", f"source.path={trained}", "mapping=default", run_dir=tmp_path / "x")
    assert summary["status"] == "evaluated" and summary["val_acc"] > 0.8


def test_class_names_that_are_formulas_are_written_as_text(run_pipeline, tmp_path, trained):
    weights = load_file(trained)
    hostile = ["=HYPERLINK(\"http://x\",\"y\")", "=1+1", "+cmd", "@SUM(A1)", "-2+3"]
    path = tmp_path / "hostile.safetensors"
    save_file(weights, path, metadata={"task": "classification", "classes": json.dumps(hostile)})
    from PIL import Image

    images = tmp_path / "=cmd"
    images.mkdir()
    for i in range(3):
        Image.new("L", (8, 8), color=40 * i).save(images / f"=img{i}.png")
    summary, run_dir = run_pipeline("mode=predict", f"source.path={path}", "mapping=default",
                                    f"predict.input='{images}'", run_dir=tmp_path / "pred")
    assert summary["predictions"] == 3
    rows = list(csv.reader((run_dir / "predictions.csv").open()))
    cells = [c for row in rows for c in row]
    assert not any(c.startswith(("=", "+", "@")) for c in cells), cells[:20]
    assert "prob_=1+1" in rows[0]  # a header cell starts with prob_: no formula, left as it is
    predicted = [row[rows[0].index("predicted")] for row in rows[1:]]
    assert all(p[:1] == "'" and p[1:] in hostile for p in predicted), predicted


@pytest.mark.parametrize(("cell", "safe"), [("=1+1", "'=1+1"), ("+x", "'+x"), ("@A", "'@A"), ("-x", "'-x"),
                                           ("\tx", "'\tx"), ("-0.25", "-0.25"), ("+3", "+3"), ("cat", "cat"),
                                           (0.5, 0.5), ("", "")])
def test_spreadsheet_safe(cell, safe):
    assert spreadsheet_safe(cell) == safe
