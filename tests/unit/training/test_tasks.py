"""Your own data (`data._target_`), dict batches, `model.output`, tasks, losses, metrics, mode=eval / predict."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from helpers import compose_config, read_json

from transfer_pipeline.errors import UserError
from transfer_pipeline.run.lifecycle import run
from transfer_pipeline.schema import data_config

GENERIC = ("source=none", "mapping=default", "freeze=none", "trainer.epochs=4", "trainer.progress=false",
           "optim.lr=0.02")


def configured(data: dict, model: dict, *overrides: str):
    cfg = compose_config(*GENERIC, *overrides)
    cfg.data, cfg.model = data_config(data), model
    cfg.__post_init__()  # the cross-node checks, as composing would run them
    return cfg


def run_with(tmp_path, data: dict, model: dict, *overrides: str, name: str = "run"):
    """The pipeline on `data` (a `_target_` node) and `model`, with `overrides` on the generic groups."""
    run_dir = tmp_path / name
    return run(configured(data, model, *overrides), run_dir), run_dir


MLP = {"_target_": "data_targets.mlp"}
MLP2 = {"_target_": "data_targets.mlp", "num_classes": 2}
MLP1 = {"_target_": "data_targets.mlp", "num_classes": 1}


def keyword_net(**kw) -> dict:
    return {"_target_": "data_targets.KeywordNet", **kw}


def test_your_own_data_target_trains_and_records_its_classes(tmp_path):
    summary, run_dir = run_with(tmp_path, {"_target_": "data_targets.tuple_splits", "n": 300}, MLP)
    assert summary["status"] == "completed"
    assert summary["classes"] == ["red", "green", "blue"]
    assert (summary["train_samples"], summary["val_samples"], summary["test_samples"]) == (180, 60, 60)
    assert summary["val_acc"] > 0.8
    from safetensors import safe_open

    with safe_open(str(run_dir / "model.safetensors"), "pt") as f:  # what mode=predict reads the names from
        assert json.loads(f.metadata()["classes"]) == ["red", "green", "blue"]


def test_data_without_class_names_counts_classes_from_the_model(tmp_path):
    summary, _ = run_with(tmp_path, {"_target_": "data_targets.tuple_splits", "classes": False}, MLP)
    assert summary["num_classes"] == 3 and "classes" not in summary


@pytest.mark.parametrize("returns, output", [("object", "logits"), ("dict", "logits"), ("tuple", 1)])
def test_dict_batches_go_to_the_model_as_keywords_and_model_output_picks_the_logits(tmp_path, returns, output):
    summary, _ = run_with(tmp_path, {"_target_": "data_targets.dict_splits"}, keyword_net(returns=returns, output=output))
    assert summary["status"] == "completed" and summary["val_acc"] > 0.8


def test_the_target_key_is_configurable(tmp_path):
    summary, _ = run_with(tmp_path, {"_target_": "data_targets.dict_splits", "key": "y", "target_key": "y"},
                          keyword_net(output="logits"))
    assert summary["status"] == "completed"


@pytest.mark.parametrize("returns", ["object", "dict"])
def test_logits_by_name_need_no_model_output(tmp_path, returns):
    summary, _ = run_with(tmp_path, {"_target_": "data_targets.dict_splits"}, keyword_net(returns=returns))
    assert summary["status"] == "completed" and summary["val_acc"] > 0.8


def test_a_model_returning_something_else_without_model_output_names_the_type_and_the_key(tmp_path):
    with pytest.raises(UserError, match=r"returns a tuple of 2 \(Tensor, Tensor\).*model.output=0"):
        run_with(tmp_path, {"_target_": "data_targets.dict_splits"}, keyword_net(returns="tuple"))
    with pytest.raises(UserError, match=r"model.output='scores'.*has no 'scores'.*model.output=logits"):
        run_with(tmp_path, {"_target_": "data_targets.dict_splits"}, keyword_net(output="scores"), name="run2")
    with pytest.raises(UserError, match=r"model.output=True"):
        run_with(tmp_path, {"_target_": "data_targets.dict_splits"}, keyword_net(output=True), name="run3")


@pytest.mark.parametrize("kind, message", [
    ("no_val", r"returned no 'val' split"),
    ("empty", r"'val' split that is empty"),
    ("triples", r"'train' split whose items are a tuple of 3"),
    ("typo", r"returned no 'val' split \(keys: \['train', 'valid'\]\)"),  # 'valid' alone would be an extra split
    ("extra_name", r"returned the key 'Shifted'; beside train, val, test, classes a key names an extra split"),
    ("extra_reserved", r"returned the key 'ema_val'.*not one of ema_val"),
    ("extra_not_a_dataset", r"'shifted' split of type int, which has no length"),
    ("list", r"returned a list; return a dict with 'train' and 'val'"),
    ("stream", r"'train' split of type Stream, which has no length"),
    ("no_target", r"dicts with keys .*and no 'labels'.*data.target_key"),
    ("names", r"the targets are str values \(e.g. 'red'\), not numbers"),
    ("ragged", r"the first validation batch cannot be made \(RuntimeError: .*Items must stack into a batch"),
])
def test_bad_data_targets_say_what_is_wrong(tmp_path, kind, message):
    summary_path = tmp_path / "run" / "summary.json"
    with pytest.raises(UserError, match=message):
        run_with(tmp_path, {"_target_": "data_targets.bad_splits", "kind": kind}, MLP)
    assert read_json(summary_path)["status"] == "failed"


def test_a_data_node_without_target_is_checked_against_the_builtin_keys():
    with pytest.raises(UserError, match="val_fractoin"):
        data_config({"name": "digits", "val_fractoin": 0.1})
    with pytest.raises(UserError, match=r"data._target_="):
        data_config({"_target_": ""})


def test_multilabel_trains_with_bce_and_reports_f1(tmp_path):
    summary, run_dir = run_with(tmp_path, {"_target_": "data_targets.multilabel_splits"}, MLP2, "task=multilabel",
                                "trainer.epochs=6")
    assert summary["monitor"] == "val_f1" and summary["val_f1"] > 0.8
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train_f1", "val_f1", "val_acc"} <= set(header)
    cfg = configured({"_target_": "data_targets.multilabel_splits"}, MLP2, "task=multilabel", "mode=eval",
                     f"source.path={run_dir / 'model.safetensors'}")
    run(cfg, tmp_path / "eval")
    report = read_json(tmp_path / "eval" / "eval.json")
    assert set(report["per_label_f1"]) == {"a", "b"} and report["split"] == "val"
    assert not (tmp_path / "eval" / "confusion.png").exists()  # a confusion matrix is for classification


def test_regression_outputs_of_shape_b1_meet_targets_of_shape_b_without_broadcasting(tmp_path):
    summary, _ = run_with(tmp_path, {"_target_": "data_targets.regression_splits"}, MLP1, "task=regression",
                          "trainer.epochs=8")
    # broadcasting [B, 1] against [B] would train every output towards the batch mean: RMSE ~ the targets' std
    assert summary["monitor"] == "val_loss" and summary["val_rmse"] < 0.6
    assert math.isclose(summary["val_rmse"] ** 2, summary["val_loss"], rel_tol=1e-4)  # MSE loss
    l1, _ = run_with(tmp_path, {"_target_": "data_targets.regression_splits"}, MLP1, "task=regression",
                     "loss=l1", "trainer.epochs=2", name="l1")
    assert math.isclose(l1["val_mae"], l1["val_loss"], rel_tol=1e-4)  # L1 loss is the MAE


def test_a_loss_of_another_task_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"CrossEntropyLoss is a classification loss and task=multilabel"):
        run_with(tmp_path, {"_target_": "data_targets.multilabel_splits"}, MLP2, "task=multilabel", "loss=cross_entropy")


def test_classification_targets_that_are_floats_suggest_regression(tmp_path):
    with pytest.raises(UserError, match=r"targets are real numbers.*task=regression"):
        run_with(tmp_path, {"_target_": "data_targets.regression_splits"}, MLP)


def test_monitor_names_follow_the_task():
    with pytest.raises(UserError, match=r"task=classification measures .*val_top5_acc"):
        compose_config("trainer.monitor=val_f1")
    assert compose_config("trainer.monitor=val_top5_acc").trainer.monitor == "val_top5_acc"  # with > 5 classes
    assert compose_config("task=regression").trainer.monitor == "val_loss"
    with pytest.raises(UserError, match=r"need trainer.ema.decay"):
        compose_config("trainer.monitor=ema_val_acc")


def test_mode_eval_uses_the_test_split_and_writes_the_confusion_matrix(tmp_path):
    summary, run_dir = run_with(tmp_path, {"_target_": "data_targets.tuple_splits"}, MLP)
    cfg = configured({"_target_": "data_targets.tuple_splits"}, MLP, "mode=eval",
                     f"source.path={run_dir / 'model.safetensors'}")
    result = run(cfg, tmp_path / "eval")
    report = read_json(tmp_path / "eval" / "eval.json")
    confusion = read_json(tmp_path / "eval" / "confusion.json")
    assert report["split"] == "test" and report["samples"] == 60 and result["status"] == "evaluated"
    assert sum(map(sum, confusion["matrix"])) == 60 and confusion["classes"] == ["red", "green", "blue"]
    hits = sum(confusion["matrix"][i][i] for i in range(3))
    assert math.isclose(report["test_acc"], hits / 60)
    assert set(report["per_class_acc"]) == {"red", "green", "blue"}
    assert (tmp_path / "eval" / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_mode_predict_on_a_split_writes_probabilities_and_the_saved_class_names(tmp_path):
    _, run_dir = run_with(tmp_path, {"_target_": "data_targets.tuple_splits"}, MLP)
    cfg = configured({"_target_": "data_targets.tuple_splits", "classes": False}, MLP,  # names from the weights
                     "mode=predict", f"source.path={run_dir / 'model.safetensors'}", "predict.top_k=2")
    summary = run(cfg, tmp_path / "pred")
    rows = list(csv.DictReader((tmp_path / "pred" / "predictions.csv").open()))
    assert summary["status"] == "predicted" and summary["predictions"] == len(rows) == 60
    names = ["red", "green", "blue"]
    for row in rows:
        probs = [float(row[f"prob_{n}"]) for n in names]
        assert math.isclose(sum(probs), 1, abs_tol=1e-4)
        assert row["predicted"] == names[probs.index(max(probs))] and row["target"] in names
        assert len(row["top_2"].split()) == 2 and row["top_2"].startswith(row["predicted"] + ":")
    accuracy = sum(r["predicted"] == r["target"] for r in rows) / len(rows)
    assert accuracy > 0.7


def test_mode_predict_refuses_random_weights_and_a_task_the_weights_were_not_trained_for(tmp_path):
    with pytest.raises(UserError, match=r"source.path is null.*random weights"):
        run(compose_config("mode=predict", "source=none"), tmp_path / "a")
    _, run_dir = run_with(tmp_path, {"_target_": "data_targets.tuple_splits"}, MLP)
    cfg = configured({"_target_": "data_targets.tuple_splits"}, MLP, "mode=predict",
                     f"source.path={run_dir / 'model.safetensors'}", "task=multilabel")
    with pytest.raises(UserError, match=r"trained with task=classification"):
        run(cfg, tmp_path / "b")


def test_mixup_is_refused_for_regression():
    with pytest.raises(UserError, match=r"data.mixup / data.cutmix.*task=regression"):
        compose_config("task=regression", "data.mixup=0.2")


def test_losses_of_the_loss_group_compose():
    from transfer_pipeline.training.task import build_loss

    for name, task in (("cross_entropy", "classification"), ("bce", "multilabel"), ("mse", "regression"),
                       ("l1", "regression"), ("smooth_l1", "regression")):
        cfg = compose_config(f"loss={name}", f"task={task}")
        assert isinstance(build_loss(cfg.task, cfg.loss), torch.nn.Module)


def test_mode_predict_refuses_a_model_with_tensors_left_unloaded(tmp_path):
    """The default experiment's mapping excludes the head: predicting with it would use a random head."""
    _, run_dir = run_with(tmp_path, {"_target_": "data_targets.tuple_splits"}, MLP)
    cfg = configured({"_target_": "data_targets.tuple_splits"}, MLP, "mode=predict",
                     f"source.path={run_dir / 'model.safetensors'}", "mapping=new_head", "mapping.exclude=[2]",
                     "mapping.expect.missing=[2]", "mapping.expect.min_loaded=0")
    with pytest.raises(UserError, match=r"2 tensor\(s\) of the model were not loaded \(2.weight, 2.bias\)"):
        run(cfg, tmp_path / "b")
    assert not (tmp_path / "b" / "predictions.csv").exists()


def test_a_nan_target_is_blamed_on_the_labels_not_on_the_learning_rate(tmp_path):
    with pytest.raises(UserError, match=r"the batch's targets hold NaN or inf. Check the dataset's labels"):
        run_with(tmp_path, {"_target_": "data_targets.regression_with_a_nan_target"}, MLP1, "task=regression",
                 "trainer.batch_size=16")


def test_model_output_on_a_model_that_returns_a_tensor_says_to_drop_it(tmp_path):
    with pytest.raises(UserError, match=r"returns a tensor of shape \(2, 3\), which has no 'logits'. Try "
                                        r"model.output=null"):
        run_with(tmp_path, {"_target_": "data_targets.tuple_splits"}, {**MLP, "output": "logits"})


def test_regression_metrics_do_not_depend_on_how_often_they_are_read(tmp_path):
    rows = []
    for every in (1, 3, 50):
        _, run_dir = run_with(tmp_path, {"_target_": "data_targets.regression_splits"}, MLP1, "task=regression",
                              "trainer.epochs=2", "trainer.batch_size=16", f"trainer.sync_every_steps={every}",
                              name=f"every{every}")
        rows.append([r.split(",")[:5] for r in (run_dir / "metrics.csv").read_text().splitlines()])
    assert rows[0] == rows[1] == rows[2]  # train_loss, train_mae, train_rmse ... bitwise, one batch at a time


def test_target_nodes_can_be_given_whole_on_the_command_line():
    """`key={_target_: ...}` on a null node: typed Any in the schema, else OmegaConf cannot assign a dict to it."""
    cfg = compose_config("+loss={_target_: torch.nn.CrossEntropyLoss, label_smoothing: 0.1}",
                         "source.model={_target_: transfer_pipeline.models.DigitsCNN}", "source.path=null",
                         "mapping.verify.source_model={_target_: transfer_pipeline.models.DigitsCNN}")
    assert cfg.loss == {"_target_": "torch.nn.CrossEntropyLoss", "label_smoothing": 0.1}
    assert cfg.source.model["_target_"] == cfg.mapping.verify.source_model["_target_"] == \
        "transfer_pipeline.models.DigitsCNN"


def test_extra_splits_are_evaluated_every_epoch_and_by_mode_eval(tmp_path):
    summary, run_dir = run_with(tmp_path, {"_target_": "data_targets.with_shifted"}, MLP, "trainer.epochs=3")
    assert summary["status"] == "completed" and summary["shifted_samples"] == 60
    import csv

    with open(run_dir / "metrics.csv") as f:
        history = list(csv.DictReader(f))
    assert len(history) == 3 and all("shifted_acc" in row and "shifted_loss" in row for row in history)
    assert summary["shifted_acc"] == pytest.approx(float(history[-1]["shifted_acc"]))
    assert summary["shifted_acc"] < summary["val_acc"] - 0.1  # the shift costs accuracy: it was evaluated on its own
    evaluated, eval_dir = run_with(tmp_path, {"_target_": "data_targets.with_shifted"}, MLP, "mode=eval",
                                   f"source.path={run_dir / 'model.safetensors'}", "mapping=default", name="eval")
    assert evaluated["shifted_acc"] == pytest.approx(summary["shifted_acc"])  # the last epoch's weights
    assert read_json(eval_dir / "eval.json")["shifted_acc"] == evaluated["shifted_acc"]
