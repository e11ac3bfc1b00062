"""The Python API against the pipeline: `transfer_pipeline.plan_weights` reports what a mode=plan run writes,
field for field (the API alone: tests/unit/test_api.py)."""

from __future__ import annotations

from helpers import read_json

import transfer_pipeline as tp

SOURCE = "pkg://transfer_pipeline/assets/digits_cnn_0to4.safetensors"


def test_report_prints_the_pipelines_table_and_has_the_json_fields(run_pipeline, model):
    report = tp.plan_weights(model, SOURCE, exclude=["head"])  # model: a seeded DigitsCNN (conftest)
    text = str(report)
    assert text.startswith("Load plan: file ") and "head    0/2     fresh init: 2 excluded" in text
    assert "LoadReport(18/20 tensors loaded" in repr(report)
    _, run_dir = run_pipeline("mode=plan")
    as_yaml = read_json(run_dir / "load_report.json")
    ours = report.to_dict()
    for key in ("loaded", "missing", "unexpected", "mismatched", "renamed", "loaded_fraction", "entries"):
        assert ours[key] == as_yaml[key], key
