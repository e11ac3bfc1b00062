"""data: listing image_folder files on real, messy folders: symlinks, duplicates, FIFOs.

Runs over such folders (broken files, train/val/test splits, predict) are in tests/e2e/test_data_runs.py."""

from __future__ import annotations

import os
import threading

from helpers import make_images

from transfer_pipeline.data.image_files import list_images


def test_train_and_val_never_share_an_image(tmp_path):
    root = make_images(tmp_path / "images")
    (root / "cat" / "copy.png").symlink_to(root / "cat" / "0.png")
    classes, samples = list_images(root)
    reals = [os.path.realpath(p) for p, _ in samples]
    assert len(reals) == len(set(reals)) == 60


def test_a_fifo_named_like_an_image_is_not_opened(tmp_path):
    root = make_images(tmp_path / "images", per_class=3)
    os.mkfifo(root / "cat" / "pipe.jpg")
    result = {}
    t = threading.Thread(target=lambda: result.update(out=list_images(root)), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive() and len(result["out"][1]) == 6
