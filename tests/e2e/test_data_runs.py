"""data: whole runs over real, messy image folders: symlinks, broken files, train/val/test splits, eval and
predict on folders, the source weights' own preprocessing (the listing alone: tests/unit/data/test_image_folders.py)."""

from __future__ import annotations

import json

import pytest
from helpers import make_images

from transfer_pipeline.data.image_files import list_images
from transfer_pipeline.errors import UserError

BASE = ["experiment=from_scratch", "data=image_folder", "data.image_size=8", "data.channels=1", "model.num_classes=2",
        "trainer.epochs=1"]


def test_a_symlink_back_up_the_tree_neither_loops_nor_duplicates(run_pipeline, tmp_path):
    root = make_images(tmp_path / "images")
    (root / "cat" / "again").symlink_to(root / "cat")  # a loop: cat/again/again/... for ever
    (root / "dog" / "all").symlink_to(root)  # reaches cat/ and dog/ once more from inside dog/
    with pytest.raises(UserError, match=r"the same image .* an image can belong to one class only"):
        list_images(root)
    (root / "dog" / "all").unlink()
    classes, samples = list_images(root)
    assert classes == ["cat", "dog"] and len(samples) == 60  # not 540
    summary, _ = run_pipeline(*BASE, f"data.root={root}")
    assert summary["train_samples"] + summary["val_samples"] == 60


@pytest.mark.parametrize(("name", "content", "why"), [
    ("empty.png", b"", "empty file"),
    ("text.png", b"not an image at all", "UnidentifiedImageError"),
    ("cut.png", None, "OSError"),
])
def test_bad_images_are_reported_by_path_or_skipped_with_a_count(run_pipeline, tmp_path, caplog, name, content, why):
    root = make_images(tmp_path / "images")
    bad = root / "dog" / name
    if content is None:  # a truncated PNG
        bad.write_bytes((root / "dog" / "0.png").read_bytes()[:60])
    else:
        bad.write_bytes(content)
    with pytest.raises(UserError) as e:
        run_pipeline(*BASE, f"data.root={root}")
    assert f"{bad}: " in str(e.value) and why in str(e.value) and "data.skip_bad_images=true" in str(e.value)
    summary, _ = run_pipeline(*BASE, f"data.root={root}", "data.skip_bad_images=true", run_dir=tmp_path / "skip")
    assert summary["status"] == "completed" and summary["train_samples"] + summary["val_samples"] == 60
    assert "left out 1 of 61 image file(s)" in caplog.text


def test_an_empty_class_folder_and_a_missing_root_are_errors(run_pipeline, tmp_path):
    root = make_images(tmp_path / "images", per_class=3)
    (root / "fish").mkdir()
    with pytest.raises(UserError, match=r"class folder .*fish has no image files"):
        list_images(root)
    with pytest.raises(UserError, match=r"data\.root: no such file: .*nowhere"):
        run_pipeline(*BASE, f"data.root={tmp_path / 'nowhere'}")


def test_train_val_and_test_folders_and_mode_eval_on_test(run_pipeline, tmp_path):
    root = tmp_path / "images"
    for split, n in (("train", 20), ("val", 6), ("test", 8)):
        make_images(root / split, per_class=n)
    summary, run_dir = run_pipeline(*BASE, f"data.root={root}", "trainer.epochs=3")
    assert (summary["train_samples"], summary["val_samples"], summary["test_samples"]) == (40, 12, 16)
    assert summary["preprocessing"].startswith("resize 8 (bilinear), center crop 8")
    evaluated, eval_dir = run_pipeline(*BASE, f"data.root={root}", "mode=eval",
                                       f"source.path={run_dir / 'model.safetensors'}", run_dir=tmp_path / "eval")
    report = json.loads((eval_dir / "eval.json").read_text())
    assert report["split"] == "test" and report["samples"] == 16 and evaluated["eval_split"] == "test"
    assert json.loads((eval_dir / "confusion.json").read_text())["classes"] == ["cat", "dog"]


def test_a_train_folder_without_val_is_an_error_not_a_class(run_pipeline, tmp_path):
    make_images(tmp_path / "images" / "train")
    with pytest.raises(UserError, match=r"has a train/ or test/ folder but no val/ folder"):
        run_pipeline(*BASE, f"data.root={tmp_path / 'images'}")


def test_mode_predict_on_a_folder_of_images(run_pipeline, tmp_path):
    root = make_images(tmp_path / "images")
    _, run_dir = run_pipeline(*BASE, f"data.root={root}", "trainer.epochs=4", "optim.lr=0.05")
    loose = tmp_path / "new" / "deeper"
    loose.mkdir(parents=True)
    for cls in ("cat", "dog"):  # unlabelled files at any depth
        (loose / f"{cls}_0.png").write_bytes((root / cls / "0.png").read_bytes())
    (tmp_path / "new" / "notes.txt").write_text("not an image")
    summary, pred_dir = run_pipeline(*BASE, "mode=predict", f"source.path={run_dir / 'model.safetensors'}",
                                     f"predict.input={tmp_path / 'new'}", run_dir=tmp_path / "pred")
    import csv

    rows = list(csv.DictReader((pred_dir / "predictions.csv").open()))
    assert summary["predictions"] == 2 and [r["input"].rsplit("/", 1)[1] for r in rows] == ["cat_0.png", "dog_0.png"]
    assert {"predicted", "probability", "prob_cat", "prob_dog"} <= set(rows[0])  # names from the weights' metadata
    assert [r["predicted"] for r in rows] == ["cat", "dog"]
    with pytest.raises(UserError, match=r"predict.input: .* holds no image files"):
        run_pipeline(*BASE, "mode=predict", f"source.path={run_dir / 'model.safetensors'}",
                     f"predict.input={tmp_path / 'new' / 'empty'}" if (tmp_path / "new" / "empty").mkdir() is None
                     else "", run_dir=tmp_path / "pred2")


def test_the_plan_prints_the_source_weights_own_preprocessing(run_pipeline, tmp_path, torch_home_with_resnet18, caplog):
    import logging

    make_images(tmp_path / "images")
    with caplog.at_level(logging.INFO):
        summary, _ = run_pipeline("experiment=replace_head", "data=image_folder", f"data.root={tmp_path / 'images'}",
                                  "mode=plan", "data.augment=trivialaugment",
                                  "data.image_size=null", "data.mean=null", "data.std=null")
    assert summary["preprocessing"] == ("resize 256 (bilinear), center crop 224, mean [0.485, 0.456, 0.406], std "
                                        "[0.229, 0.224, 0.225], 3 channels (from "
                                        "ResNet18_Weights.IMAGENET1K_V1.transforms())")
    assert "train augmentation: random horizontal flip + TrivialAugmentWide" in caplog.text
