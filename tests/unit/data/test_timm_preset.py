"""data.preset=auto with a `timm://name.tag` source: timm's own pretrained_cfg gives the preprocessing."""

from __future__ import annotations

import pytest

from transfer_pipeline.data.preprocess import preset_source, resolve_preprocessing
from transfer_pipeline.errors import UserError
from transfer_pipeline.schema import DataConfig, SourceConfig


def _data(**kw):
    return DataConfig(**{"name": "image_folder", "root": "x", "channels": 3, "image_size": None, **kw})


@pytest.mark.parametrize("name", ["resnet18.a1_in1k", "convnext_tiny.fb_in22k", "vit_small_patch16_224.augreg_in21k"])
def test_the_numbers_are_timms_own_eval_transform(name):
    import timm
    from timm.data import create_transform, resolve_data_config
    from torchvision.transforms import CenterCrop, Normalize, Resize

    pre = resolve_preprocessing(_data(), preset_source(SourceConfig(path=f"timm://{name}")))
    steps = create_transform(**resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(name).to_dict())).transforms
    resize = next(t for t in steps if isinstance(t, Resize))
    crop = next(t for t in steps if isinstance(t, CenterCrop))
    norm = next(t for t in steps if isinstance(t, Normalize))
    assert pre.resize == resize.size and [pre.crop] * 2 == list(crop.size)
    assert pre.interpolation == resize.interpolation.value
    assert list(pre.mean) == pytest.approx(norm.mean.tolist()) and list(pre.std) == pytest.approx(norm.std.tolist())
    assert name in pre.origin


def test_source_weights_wins_and_plain_files_name_no_preset():
    assert preset_source(SourceConfig(path="timm://resnet18.a1_in1k", weights="ResNet18_Weights.DEFAULT")) \
        == "ResNet18_Weights.DEFAULT"
    assert preset_source(SourceConfig(path="my.pt")) is None and preset_source(SourceConfig(path="hf://a/b")) is None


def test_an_unknown_tag_is_one_message():
    with pytest.raises(UserError, match=r"data.preset"):
        resolve_preprocessing(_data(), "timm://resnet18.no_such_tag")
