"""A Hugging Face model built from its config.json trains through the pipeline (transformers is in the dev extra).

Keyword inputs (input_ids, attention_mask) from dict items, an output object with `.logits`
(model.output=logits), a "pretrained" checkpoint as `save_pretrained` writes it, frozen embeddings.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import bert_config

transformers = pytest.importorskip("transformers", reason="pip install -e '.[dev]' installs transformers")

from transfer_pipeline.run.lifecycle import run  # noqa: E402
from transfer_pipeline.schema import data_config  # noqa: E402


def sentiment(*topics: str) -> dict:
    return data_config({"_target_": "transfer_pipeline.data.toy_text.splits", "task": "sentiment", "num_samples": 1000,
                        "topics": list(topics)})


def test_a_bert_built_from_config_json_loads_freezes_its_embeddings_and_trains(tmp_path, compose):
    """Pretrain on sentences about sport and food, save as the Hub does, fine-tune on weather and music."""
    from safetensors.torch import load_file

    from transfer_pipeline.models.huggingface import from_config

    model = {"_target_": "transfer_pipeline.models.huggingface.from_config", "config": bert_config(tmp_path, 2),
             "output": "logits"}
    common = ("mapping=default", "freeze=none", "trainer.batch_size=32", "optim.lr=0.003", "trainer.progress=false")
    cfg = compose(*common, "source=none", "trainer.epochs=5")
    cfg.model, cfg.data = model, sentiment("sport", "food")
    assert run(cfg, tmp_path / "pretrain")["status"] == "completed"
    hub = from_config(bert_config(tmp_path, 2))
    hub.load_state_dict(load_file(tmp_path / "pretrain" / "model.safetensors"))
    hub.save_pretrained(tmp_path / "pretrained")  # config.json + model.safetensors, as downloaded from the Hub

    cfg = compose(*common, f"source.path={tmp_path / 'pretrained'}", "mapping.expect.min_loaded=1.0",
                  "freeze.frozen=[bert.embeddings.*]", "trainer.epochs=3")
    cfg.model, cfg.data = model, sentiment("weather", "music")
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "completed", summary.get("error")
    assert json.loads((tmp_path / "run" / "load_report.json").read_text())["missing"] == []
    before = load_file(tmp_path / "pretrained" / "model.safetensors")
    after = load_file(tmp_path / "run" / "model.safetensors")
    for name in ("bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight"):
        assert torch.equal(before[name], after[name]), name  # frozen: bitwise the pretrained values
    moved = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(before[moved], after[moved])  # the encoder trained
    assert summary["val_acc"] > 0.85  # the words for good and bad carry over to the other topics


def test_a_hugging_face_model_needs_no_model_output(tmp_path, compose):
    """Its SequenceClassifierOutput has `.logits`: the only sensible answer is taken without asking."""
    cfg = compose("source=none", "mapping=default", "freeze=none", "trainer.epochs=1")
    cfg.model = {"_target_": "transfer_pipeline.models.huggingface.from_config", "config": bert_config(tmp_path, 2)}
    cfg.data = data_config({"_target_": "transfer_pipeline.data.toy_text.splits", "num_samples": 100})
    assert run(cfg, tmp_path / "run")["status"] == "completed"
