"""Models by name (transfer_pipeline/models/families.py) and `num_classes: null` from the data (run/classes.py)."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import compose_config
from transfer_pipeline.build import build_model
from transfer_pipeline.errors import UserError
from transfer_pipeline.models import families
from transfer_pipeline.run import classes
from transfer_pipeline.run.state import Run
from transfer_pipeline.schema import Mode


def test_torchvision_by_name_with_class_count():
    model = families.torchvision("resnet18", num_classes=7)
    assert type(model).__name__ == "ResNet" and model.fc.out_features == 7
    assert families.torchvision("mobilenet_v3_small", num_classes=3).classifier[-1].out_features == 3


def test_torchvision_unknown_name_lists_close_names():
    with pytest.raises(UserError, match=r"model.name='resnt18'.*Closest names: resnet18"):
        families.torchvision("resnt18")


def test_torchvision_refused_argument_names_it_and_what_the_model_takes():
    with pytest.raises(UserError) as e:
        families.torchvision("resnet18", num_classes=3, in_channels=1)
    msg = str(e.value)
    assert msg.startswith("model.in_channels:") and "'in_channels'" in msg
    assert "It takes:" in msg and "zero_init_residual" in msg and "num_classes" in msg


def test_timm_by_name_and_tag_without_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = families.timm("resnet18.a1_in1k", num_classes=4)
    assert model.get_classifier().out_features == 4
    assert model.pretrained_cfg["tag"] == "a1_in1k"  # the tag's own config (mean/std, input size) came along


def test_timm_refuses_pretrained_and_misspelt_arguments():
    with pytest.raises(UserError, match=r"source.path=timm://resnet18"):
        families.timm("resnet18", pretrained=True)
    with pytest.raises(UserError, match=r"model.drop_rat:.*Closest names: drop_rate"):
        families.timm("resnet18", drop_rat=0.1)
    with pytest.raises(UserError, match=r"timm has no model 'resnet1800'.*resnet1"):
        families.timm("resnet1800")


def _tiny_config(folder, **fields):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(fields))
    return folder


BERT = dict(model_type="bert", vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=32, architectures=["BertForMaskedLM"],
            id2label={"0": "a", "1": "b", "2": "c"})


def test_hf_from_folder_gets_the_task_head_and_the_class_count(tmp_path):
    model = families.hf(str(_tiny_config(tmp_path / "bert", **BERT)), num_classes=5)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.classifier.out_features == 5  # not the source's 3 labels
    vit = _tiny_config(tmp_path / "vit", model_type="vit", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, image_size=8, patch_size=4, num_channels=1)
    assert type(families.hf(str(vit), num_classes=2)).__name__ == "ViTForImageClassification"


def test_hf_errors_name_the_key(tmp_path):
    folder = str(_tiny_config(tmp_path / "bert", **BERT))
    with pytest.raises(UserError, match=r"model.hiden_size:.*Closest names: hidden_size"):
        families.hf(folder, hiden_size=8)
    with pytest.raises(UserError, match=r"model.head='seq'"):
        families.hf(folder, head="seq")
    with pytest.raises(UserError, match=r"no config.json"):
        families.hf(str(tmp_path / "empty/"), num_classes=2)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match=r"cannot read .*config.json"):
        families.hf(str(tmp_path / "bad"))


def test_hf_hub_id_not_cached_offline_names_the_cache_and_the_fill_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as e:
        families.hf("some-org/not-cached", num_classes=2)
    msg = str(e.value)
    assert msg.startswith("model.name='some-org/not-cached'") and str(tmp_path / "hub") in msg
    assert msg.endswith("download some-org/not-cached")  # the whole repo: its weights come next (hf://)


def test_hf_hub_id_from_the_cache(tmp_path, monkeypatch):
    from cache_models import write_hub_cache

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_hub_cache(tmp_path / "hub", "acme/tiny-bert", {"config.json": BERT})
    model = families.hf("acme/tiny-bert", num_classes=2)
    assert type(model).__name__ == "BertForSequenceClassification" and model.config.hidden_size == 16
    with pytest.raises(UserError, match=r"revision 'v2' of acme/tiny-bert is not in the hub cache"):
        families.hf("acme/tiny-bert", revision="v2")
    with pytest.raises(UserError, match=r"model.name='acme/../x'"):
        families.hf("acme/../x")


def _run(*overrides: str) -> Run:
    return Run(compose_config(*overrides), run_dir=None, summary={})  # type: ignore[arg-type]


def test_class_count_comes_from_the_data_and_the_data_is_kept():
    r = _run("model=torchvision", "model.name=resnet18", "data.classes=[1,2,3]")
    node = classes.with_class_count(r)
    assert node["num_classes"] == 3 and r.data is not None and len(r.data.class_names) == 3
    assert r.summary["num_classes_from"] == "the data's classes"
    assert build_model(node).fc.out_features == 3


def test_a_count_that_is_set_wins_and_reads_no_data():
    r = _run("model=torchvision", "model.name=resnet18", "model.num_classes=9")
    assert classes.with_class_count(r)["num_classes"] == 9 and r.data is None


def test_export_takes_the_weights_classes_or_the_models_default():
    r = _run("model=timm", "model.name=resnet18", "mode=export")
    assert r.cfg.mode == Mode.export and classes.wants_source(r)

    class Source:
        extra = {"classes": json.dumps(["cat", "dog"])}

    assert classes.with_class_count(r, Source())["num_classes"] == 2 and r.data is None
    assert "num_classes" not in classes.with_class_count(_run("model=timm", "model.name=resnet18", "mode=export"), None)


def test_custom_class_without_num_classes_gets_none_passed():
    r = _run("model=custom", "model._target_=torch.nn.Flatten")  # takes no num_classes (and no **kwargs)
    assert classes.with_class_count(r) == {"_target_": "torch.nn.Flatten"}
    r = _run("model=custom", "model._target_=transfer_pipeline.models.DigitsCNN")
    assert classes.with_class_count(r)["num_classes"] == 5  # the default data: digits 5-9


def test_switching_the_model_carries_no_other_models_arguments():
    for family, name in (("torchvision", "resnet18"), ("timm", "resnet18"), ("hf", "x/y")):
        node = compose_config(f"model={family}", f"model.name={name}").model
        assert "in_channels" not in node and node["name"] == name and node["num_classes"] is None


def test_the_built_family_model_runs_a_batch():
    model = build_model({"_target_": "transfer_pipeline.models.families.timm", "name": "resnet18", "num_classes": 2})
    assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 2)
