"""Every shipped scenario end to end, in-process (compose the real configs, run the pipeline)."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from transfer_pipeline.errors import UserError
from transfer_pipeline.models.digits import ASSETS, PRETRAINED_0TO4

from helpers import read_json

REPORT_KEYS = {"loaded", "missing", "unexpected", "mismatched", "renamed", "loaded_fraction"}
SUMMARY_KEYS = {"status", "epochs", "val_acc", "val_loss", "train_samples_per_s", "trainable_params",
                "frozen_params", "device"}


def metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_default_run_transfers_and_trains_head_then_block2(run_pipeline):
    summary, run_dir = run_pipeline()
    assert summary["status"] == "completed"
    assert SUMMARY_KEYS <= set(summary)
    assert summary["val_acc"] >= 0.9
    report = read_json(run_dir / "load_report.json")
    assert REPORT_KEYS <= set(report)
    assert not [n for n in report["missing"] if not n.startswith("head.")]
    assert report["excluded"] == ["head.weight", "head.bias"]

    source, final = load_file(PRETRAINED_0TO4), load_file(run_dir / "model.safetensors")
    assert set(final) == set(source)
    frozen_all_run = [n for n in source if n.startswith(("stem.", "block1."))]
    for name in frozen_all_run:  # weights and BN running statistics (bn=eval): bitwise untouched
        assert torch.equal(source[name], final[name]), name
    assert not torch.equal(source["block2.0.weight"], final["block2.0.weight"])  # unfrozen at epoch 3
    assert not torch.equal(source["block2.1.running_mean"], final["block2.1.running_mean"])

    rows = metrics(run_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(6))
    trainable = [int(r["trainable_params"]) for r in rows]
    assert trainable[:3] == [325] * 3 and trainable[3] > 325
    assert float(rows[0]["lr/unfreeze@3"]) == 0.002 and float(rows[0]["lr/default"]) == 0.01
    assert (run_dir / "checkpoints" / "last.safetensors").is_file()


def test_block2_changes_from_its_unfreeze_epoch_and_not_before(run_pipeline):
    _, run_dir = run_pipeline("trainer.epochs=4", "freeze.schedule.0.epoch=2", "trainer.keep_epoch_checkpoints=true")
    source = load_file(PRETRAINED_0TO4)
    epochs = [load_file(run_dir / "checkpoints" / f"epoch_{e}.safetensors") for e in range(4)]
    for name in ("block2.0.weight", "block2.1.weight", "block2.1.running_mean"):
        assert torch.equal(epochs[0][name], source[name]) and torch.equal(epochs[1][name], source[name]), name
        assert not torch.equal(epochs[2][name], source[name]), name
    assert not torch.equal(epochs[0]["head.weight"], epochs[1]["head.weight"])


def test_replace_head_resnet18_from_torchvision_weights(run_pipeline, torch_home_with_resnet18):
    _, ckpt = torch_home_with_resnet18
    summary, run_dir = run_pipeline("experiment=replace_head", "trainer.limit_train_batches=2",
                                    "trainer.limit_val_batches=1", "trainer.batch_size=16")
    report = read_json(run_dir / "load_report.json")
    assert {m["target"] for m in report["mismatched"]} == {"fc.weight", "fc.bias"}
    assert report["mismatched"][0]["source_shape"] == [1000, 512]
    assert report["missing"] == ["fc.weight", "fc.bias"]
    assert len(report["loaded"]) == 120
    source, final = torch.load(ckpt, weights_only=True), load_file(run_dir / "model.safetensors")
    assert torch.equal(source["conv1.weight"], final["conv1.weight"])  # never unfrozen
    assert torch.equal(source["layer1.0.bn1.running_var"], final["layer1.0.bn1.running_var"])
    assert not torch.equal(source["layer4.1.conv2.weight"], final["layer4.1.conv2.weight"])  # epoch 2
    rows = metrics(run_dir)
    assert int(rows[0]["trainable_params"]) == 512 * 5 + 5
    assert float(rows[0]["lr/unfreeze@2"]) == 0.001


def test_architecture_only_builds_from_config_without_weights(run_pipeline):
    summary, run_dir = run_pipeline("experiment=from_scratch", "trainer.epochs=2")
    report = read_json(run_dir / "load_report.json")
    assert report["loaded"] == [] and report["source"] is None and report["loaded_fraction"] == 0.0
    assert summary["frozen_params"] == 0 and summary["status"] == "completed"


def test_renamed_layers_load_through_regex_rules_and_compute_the_same(run_pipeline):
    from transfer_pipeline.models import BackboneNet, FeaturesNet

    _, run_dir = run_pipeline("experiment=renamed_layers", "mode=export")
    report = read_json(run_dir / "load_report.json")
    assert report["renamed"]["features.3.weight"] == "backbone.3.weight"
    assert report["renamed"]["layer1.bias"] == "fc1.bias"
    assert report["missing"] == [] and report["unexpected"] == []
    torch.manual_seed(0)  # the pipeline seeds with seed=0, builds the target, then the source
    target = BackboneNet(num_classes=5)
    source = FeaturesNet(num_classes=5)
    target.load_state_dict(load_file(run_dir / "model.safetensors"))
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(target(x), source(x), rtol=0, atol=1e-6)


def test_added_and_removed_layers_are_reported(run_pipeline):
    summary, run_dir = run_pipeline("experiment=added_removed_layers", "trainer.epochs=4")
    report = read_json(run_dir / "load_report.json")
    assert set(report["missing"]) == {"neck.0.weight", "neck.0.bias", "head.weight", "head.bias"}
    assert {n for n in report["unexpected"] if n.startswith("block2.")} == {n for n in load_file(PRETRAINED_0TO4) if n.startswith("block2.")}
    assert all(n.startswith(("stem.", "block1.")) for n in report["loaded"])
    assert summary["status"] == "completed"


def test_changed_size_skip_reports_and_loads_the_rest(run_pipeline):
    _, run_dir = run_pipeline("experiment=changed_size", "trainer.epochs=1")
    report = read_json(run_dir / "load_report.json")
    shapes = {m["target"]: (m["source_shape"], m["target_shape"]) for m in report["mismatched"]}
    assert shapes["fc2.weight"] == ([5, 10], [6, 12])
    assert report["loaded"] == ["fc0.weight", "fc0.bias"]


def test_changed_size_error_stops_before_training_naming_both_shapes(run_pipeline, tmp_path):
    with pytest.raises(UserError, match=r"fc2\.weight: source \(5, 10\) vs target \(6, 12\)"):
        run_pipeline("experiment=changed_size", "mapping.on_mismatch=error")
    run_dir = tmp_path / "run"
    assert not (run_dir / "metrics.csv").exists() and not (run_dir / "model.safetensors").exists()
    assert read_json(run_dir / "summary.json")["status"] == "failed"


def test_wrapped_checkpoint_needs_no_rules(run_pipeline):
    _, run_dir = run_pipeline("experiment=wrapped_checkpoint", "mode=plan")
    report = read_json(run_dir / "load_report.json")
    assert report["stripped_prefix"] == "module._orig_mod."
    assert len(report["loaded"]) == 18


@pytest.mark.parametrize("wrap", ["module.", "_orig_mod.", "nested", "module.+nested"])
def test_each_wrapping_loads_and_plan_names_it(run_pipeline, tmp_path, wrap):
    sd = load_file(PRETRAINED_0TO4)
    prefix = wrap.split("+")[0] if wrap != "nested" else ""
    obj = {prefix + k: v for k, v in sd.items()}
    if "nested" in wrap:
        obj = {"state_dict": obj, "epoch": 7, "optimizer_name": "adamw"}
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    _, run_dir = run_pipeline(f"source.path={path}", "mode=export")
    report = read_json(run_dir / "load_report.json")
    assert report["stripped_prefix"] == prefix
    assert len(report["loaded"]) == 18
    final = load_file(run_dir / "model.safetensors")
    assert torch.equal(final["block1.0.weight"], sd["block1.0.weight"])


def test_model_to_model_without_a_file(run_pipeline):
    _, run_dir = run_pipeline("experiment=model_to_model", "mode=export")
    report = read_json(run_dir / "load_report.json")
    assert report["source"] == "model transfer_pipeline.models.pretrained_digits_cnn"
    assert torch.equal(load_file(run_dir / "model.safetensors")["stem.0.weight"], load_file(PRETRAINED_0TO4)["stem.0.weight"])


def test_pickled_module_refused_unless_trusted(run_pipeline, tmp_path):
    with pytest.raises(UserError, match="source.trust_pickle=true"):
        run_pipeline("experiment=pickled_module", "source.trust_pickle=false", "mode=plan")
    _, run_dir = run_pipeline("experiment=pickled_module", "mode=plan", run_dir=tmp_path / "trusted")
    assert len(read_json(run_dir / "load_report.json")["loaded"]) == 18


def test_state_dict_loads_with_weights_only(run_pipeline, tmp_path, monkeypatch):
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    path = tmp_path / "sd.pt"
    torch.save(load_file(PRETRAINED_0TO4), path)
    run_pipeline(f"source.path={path}", "mode=plan")
    assert seen and all(w is True for w in seen)


def test_plan_mode_trains_nothing(run_pipeline):
    summary, run_dir = run_pipeline("mode=plan")
    assert summary["status"] == "planned"
    assert (run_dir / "load_report.json").is_file()
    assert not (run_dir / "metrics.csv").exists() and not (run_dir / "model.safetensors").exists()


def test_export_writes_target_named_weights_without_data(run_pipeline, monkeypatch):
    import transfer_pipeline.data.datasets as data

    monkeypatch.setattr(data, "build_data", lambda *a: pytest.fail("export must not touch data"))
    _, export_dir = run_pipeline("experiment=wrapped_checkpoint", "mode=export")
    exported = load_file(export_dir / "model.safetensors")
    assert "stem.0.weight" in exported and not any(k.startswith("module.") for k in exported)
    assert not (export_dir / "metrics.csv").exists()


def test_eval_mode_reports_accuracy_without_training(run_pipeline):
    summary, run_dir = run_pipeline("mode=eval", "mapping.exclude=[]", "mapping.expect.missing=null",
                                    "data.classes=[0,1,2,3,4]")
    assert summary["status"] == "evaluated" and summary["val_acc"] > 0.95  # the source's own task
    assert not (run_dir / "metrics.csv").exists()


def test_expect_min_loaded_makes_a_partial_load_an_error(run_pipeline):
    with pytest.raises(UserError, match="min_loaded=0.999"):
        run_pipeline("mapping.expect.min_loaded=0.999", "mode=plan")


def test_expect_missing_declares_exactly_what_stays_unloaded(run_pipeline):
    with pytest.raises(UserError, match="not declared missing: head.weight, head.bias"):
        run_pipeline("mapping.expect.missing=[]", "mode=plan")


def test_strict_false_loaded_nothing_is_an_error(run_pipeline):
    with pytest.raises(UserError, match="loaded nothing"):
        run_pipeline("experiment=renamed_layers", "mapping.rules=[]", "mapping.expect.missing=null", "mode=plan")


def test_zero_match_selector_lists_closest_names(run_pipeline):
    with pytest.raises(UserError, match=r"freeze.trainable: selector 'haed' matches no parameter.*head"):
        run_pipeline("freeze.trainable=[haed]", "mode=plan")


def test_parameter_in_two_lr_groups_is_an_error(run_pipeline):
    with pytest.raises(UserError, match="already in group"):
        run_pipeline("+optim.groups=[{params: [block2], lr: 0.1}, {params: ['block2.0.*'], lr: 0.2}]",
                     "freeze.schedule=[]", "mode=plan")


def test_lr_groups_apply(run_pipeline):
    summary, run_dir = run_pipeline("freeze.trainable=null", "freeze.schedule=[]", "trainer.epochs=1",
                                    "optim.groups=[{name: backbone, params: [stem, block1, block2], lr: 0.001}]")
    row = metrics(run_dir)[0]
    assert float(row["lr/backbone"]) == 0.001 and float(row["lr/default"]) == 0.01


def test_cuda_requested_without_cuda_is_an_error(run_pipeline):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here; this checks the message where it is not")
    with pytest.raises(UserError, match="device=cuda: CUDA is not available"):
        run_pipeline("device=cuda")


@pytest.mark.cuda
def test_default_run_on_cuda(run_pipeline):
    summary, _ = run_pipeline("device=cuda")
    assert summary["device"].startswith("cuda") and summary["val_acc"] >= 0.9


def test_nan_loss_stops_with_a_message_and_keeps_finished_epochs(run_pipeline, tmp_path):
    # 14 train batches per epoch on digits 5-9: the model diverges during epoch 1
    with pytest.raises(UserError, match="the loss became nan at epoch 1"):
        run_pipeline("experiment=from_scratch", "model=tiny_mlp", "~model.in_features", "~model.hidden",
                     "model._target_=helpers.nan_after", "+model.steps=20", "model.num_classes=5", "trainer.epochs=3")
    run_dir = tmp_path / "run"
    assert read_json(run_dir / "summary.json")["status"] == "failed"
    assert [r["epoch"] for r in metrics(run_dir)] == ["0"]  # the finished epoch is kept
    assert (run_dir / "checkpoints" / "last.safetensors").is_file()


def test_synthetic_and_image_folder_data(run_pipeline, tmp_path):
    from PIL import Image

    summary, _ = run_pipeline("experiment=from_scratch", "data=synthetic", "trainer.epochs=1")
    assert summary["num_classes"] == 5

    g = torch.Generator().manual_seed(0)
    for cls, colour in (("cat", 40), ("dog", 200)):
        folder = tmp_path / "images" / cls
        folder.mkdir(parents=True)
        for i in range(10):
            pixels = (torch.full((12, 12), colour) + torch.randint(0, 20, (12, 12), generator=g)).to(torch.uint8)
            Image.fromarray(pixels.numpy()).convert("RGB").save(folder / f"{i}.png")
    summary, _ = run_pipeline("experiment=from_scratch", "data=image_folder", f"data.root={tmp_path / 'images'}",
                              "data.image_size=8", "data.channels=1", "model.num_classes=2", "trainer.epochs=2",
                              run_dir=tmp_path / "folder_run")
    assert summary["num_classes"] == 2 and summary["train_samples"] == 16 and summary["val_samples"] == 4


def test_shipped_source_is_reproducible_from_its_experiment(run_pipeline):
    summary, run_dir = run_pipeline("experiment=pretrain_digits")
    assert summary["val_acc"] >= 0.98
    fresh, shipped = load_file(run_dir / "model.safetensors"), load_file(PRETRAINED_0TO4)
    assert {k: v.shape for k, v in fresh.items()} == {k: v.shape for k, v in shipped.items()}
    assert sorted(p.name for p in ASSETS.glob("*.pt")) == ["digits_cnn_0to4_module.pt", "digits_cnn_0to4_wrapped.pt"]


def test_plan_mode_reads_no_tensor_data(run_pipeline, monkeypatch, no_tensor_reads):
    import transfer_pipeline.mapping.apply as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("plan mode must not load tensors"))
    summary, run_dir = run_pipeline("mode=plan")
    assert summary["status"] == "planned" and len(read_json(run_dir / "load_report.json")["loaded"]) == 18


def test_a_third_party_deprecation_warning_is_shown_once(run_pipeline, caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        summary, _ = run_pipeline("experiment=from_scratch", "model=tiny_mlp", "~model.in_features", "~model.hidden",
                                  "model._target_=helpers.warning_model", "model.num_classes=5", "trainer.epochs=2")
    assert summary["status"] == "completed"
    assert sum("thirdparty.old_call is deprecated" in r.getMessage() for r in caplog.records) == 1


def test_text_classifier_loads_freezes_the_embeddings_trains_and_evaluates(run_pipeline, tmp_path):
    """The shipped transformer experiment end to end: keyword inputs, model.output=logits, frozen embeddings."""
    from safetensors.torch import load_file

    from transfer_pipeline.files import resolve_path

    summary, run_dir = run_pipeline("experiment=text_classifier", "trainer.progress=false")
    assert summary["status"] == "completed" and summary["loaded_fraction"] == 1.0
    assert summary["classes"] == ["negative", "positive"] and summary["val_acc"] > 0.95
    source = load_file(resolve_path("pkg://transfer_pipeline/assets/text_transformer_sport_food.safetensors", "x"))
    final = load_file(run_dir / "model.safetensors")
    assert all(torch.equal(source[k], final[k]) for k in source if k.startswith("embeddings."))
    assert not torch.equal(source["classifier.weight"], final["classifier.weight"])
    evaluated, eval_dir = run_pipeline("experiment=text_classifier", "mode=eval",
                                       f"source.path={run_dir / 'model.safetensors'}", run_dir=tmp_path / "eval")
    report = json.loads((eval_dir / "eval.json").read_text())
    assert report["split"] == "test" and report["samples"] == 240 and report["test_acc"] > 0.95
    assert set(report["per_class_acc"]) == {"negative", "positive"}


def test_text_source_is_reproducible_from_its_experiment(run_pipeline):
    from safetensors.torch import load_file

    from transfer_pipeline.files import resolve_path

    summary, run_dir = run_pipeline("experiment=pretrain_text", "trainer.progress=false")
    assert summary["val_acc"] >= 0.95
    shipped = load_file(resolve_path("pkg://transfer_pipeline/assets/text_transformer_sport_food.safetensors", "x"))
    made = load_file(run_dir / "model.safetensors")
    assert {k: v.shape for k, v in made.items()} == {k: v.shape for k, v in shipped.items()}


def test_text_classifier_head_on_cached_features_equals_the_full_run(run_pipeline, tmp_path):
    """Dict batches, model.output=logits and the cache together: the head alone returns the logits."""
    args = ("experiment=text_classifier", "freeze.trainable=[classifier]", "freeze.frozen=[]", "trainer.epochs=2",
            "trainer.progress=false")
    cached, cached_dir = run_pipeline(*args, "trainer.cache_features=true", run_dir=tmp_path / "cached")
    plain, plain_dir = run_pipeline(*args, run_dir=tmp_path / "plain")
    assert cached["cache_features"] == "classifier" and plain["cache_features"] is None
    a, b = load_file(cached_dir / "model.safetensors"), load_file(plain_dir / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a) and cached["val_acc"] == plain["val_acc"]
