"""data/preprocess.py: data.preset numbers, the image transforms, augmentation and MixUp / CutMix."""

from __future__ import annotations

import pickle

import pytest
import torch
from PIL import Image
from torchvision.models import get_weight

from transfer_pipeline.errors import UserError
from transfer_pipeline.schema import Augment, DataConfig, ImagePreset
from transfer_pipeline.data.preprocess import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, ImagePreprocessing, batch_mixer, describe_augment, eval_transform, is_random, resolve_preprocessing, train_transform


def data(**kw) -> DataConfig:
    kw.setdefault("image_size", None)
    kw.setdefault("channels", 3)
    return DataConfig(name="image_folder", **kw)


def rgb(h: int = 280, w: int = 300, seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())


def grey(h: int = 40, w: int = 50, seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (h, w), generator=g, dtype=torch.uint8).numpy())


def numbers(pre: ImagePreprocessing) -> tuple:
    return pre.resize, pre.crop, pre.interpolation, pre.mean, pre.std, pre.channels


def test_auto_copies_the_weights_enum_and_matches_its_transforms():
    pre = resolve_preprocessing(data(), "ResNet18_Weights.IMAGENET1K_V1")
    assert numbers(pre) == (256, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD, 3)
    assert pre.origin == "ResNet18_Weights.IMAGENET1K_V1.transforms()"
    assert pre.describe() == ("resize 256 (bilinear), center crop 224, mean [0.485, 0.456, 0.406], std [0.229, 0.224, "
                              "0.225], 3 channels (from ResNet18_Weights.IMAGENET1K_V1.transforms())")
    img = rgb()
    ours = eval_transform(pre)(img)
    theirs = get_weight("ResNet18_Weights.IMAGENET1K_V1").transforms()(img)
    assert type(ours) is torch.Tensor and ours.dtype == torch.float32 and ours.shape == (3, 224, 224)
    assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("name, expected", [
    ("torchvision.models.EfficientNet_B3_Weights.IMAGENET1K_V1", (320, 300, "bicubic")),
    ("ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1", (384, 384, "bicubic")),
    ("ResNet50_Weights.DEFAULT", (232, 224, "bilinear")),
])
def test_auto_reads_other_enums(name, expected):
    pre = resolve_preprocessing(data(), name)
    assert (pre.resize, pre.crop, pre.interpolation) == expected
    short = name.removeprefix("torchvision.models.")
    assert pre.origin.endswith(".transforms()") and short.split(".")[0] in pre.origin
    img = rgb(200, 420)
    assert torch.allclose(eval_transform(pre)(img), get_weight(short).transforms()(img), atol=1e-5)


def test_auto_names_the_member_an_alias_stands_for():
    assert resolve_preprocessing(data(), "ResNet50_Weights.DEFAULT").origin == "ResNet50_Weights.IMAGENET1K_V2.transforms()"


def test_auto_without_weights_is_resize():
    pre = resolve_preprocessing(data(image_size=96), None)
    assert numbers(pre) == (96, 96, "bilinear", IMAGENET_MEAN, IMAGENET_STD, 3)
    assert "data.preset=auto" in pre.origin and "resize" in pre.origin


@pytest.mark.parametrize("preset, expected", [
    (ImagePreset.resize, (224, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD)),
    (ImagePreset.imagenet, (256, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD)),
    (ImagePreset.inception, (342, 299, "bilinear", (0.5,) * 3, (0.5,) * 3)),
    (ImagePreset.clip, (224, 224, "bicubic", CLIP_MEAN, CLIP_STD)),
])
def test_preset_numbers(preset, expected):
    # a named preset wins over the source weights' own transforms()
    pre = resolve_preprocessing(data(preset=preset), "EfficientNet_B3_Weights.IMAGENET1K_V1")
    assert numbers(pre)[:5] == expected
    assert pre.origin == f"data.preset={preset.value}"
    assert f"data.preset={preset.value}" in pre.describe()
    out = eval_transform(pre)(rgb())
    assert out.shape == (3, expected[1], expected[1])


def test_preset_given_as_a_string():
    assert resolve_preprocessing(data(preset="clip"), None).interpolation == "bicubic"


def test_resize_grey_defaults_and_size():
    pre = resolve_preprocessing(data(preset=ImagePreset.resize, image_size=32, channels=1), None)
    assert numbers(pre) == (32, 32, "bilinear", (0.5,), (0.5,), 1)
    assert "data.image_size=32" in pre.origin


@pytest.mark.parametrize("preset, weights, expected", [
    (ImagePreset.imagenet, None, (183, 160)),  # 160 * 256 / 224 = 182.86
    (ImagePreset.inception, None, (183, 160)),  # 160 * 342 / 299 = 183.01
    (ImagePreset.clip, None, (160, 160)),
    (ImagePreset.auto, "EfficientNet_B3_Weights.IMAGENET1K_V1", (171, 160)),  # 160 * 320 / 300 = 170.67
])
def test_image_size_keeps_the_ratio(preset, weights, expected):
    pre = resolve_preprocessing(data(preset=preset, image_size=160), weights)
    assert (pre.resize, pre.crop) == expected
    assert "data.image_size=160" in pre.origin and "data.image_size=160" in pre.describe()
    assert eval_transform(pre)(rgb()).shape == (3, 160, 160)


def test_mean_std_override():
    pre = resolve_preprocessing(data(preset=ImagePreset.clip, mean=[0.3], std=[0.1, 0.2, 0.4]), None)
    assert pre.mean == (0.3, 0.3, 0.3) and pre.std == (0.1, 0.2, 0.4)
    assert pre.interpolation == "bicubic" and pre.origin == "data.preset=clip, data.mean, data.std"
    pre = resolve_preprocessing(data(mean=[0.1, 0.2, 0.3]), "ResNet18_Weights.IMAGENET1K_V1")
    assert pre.mean == (0.1, 0.2, 0.3) and pre.std == IMAGENET_STD
    assert pre.origin == "ResNet18_Weights.IMAGENET1K_V1.transforms(), data.mean"
    # the override reaches the tensor: a constant image normalises to (v - mean) / std
    out = eval_transform(pre)(Image.new("RGB", (240, 240), (51, 51, 51)))
    expected = (0.2 - torch.tensor([0.1, 0.2, 0.3])) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out.mean(dim=(1, 2)), expected, atol=1e-5)


def test_grey_averages_a_three_channel_preset():
    pre = resolve_preprocessing(data(channels=1), "ResNet18_Weights.IMAGENET1K_V1")
    assert pre.channels == 1
    assert pre.mean == pytest.approx((sum(IMAGENET_MEAN) / 3,)) and pre.std == pytest.approx((sum(IMAGENET_STD) / 3,))
    assert "averaged" in pre.origin and "1 channel" in pre.describe()
    pre = resolve_preprocessing(data(channels=1, preset=ImagePreset.clip, std=[0.25]), None)
    assert pre.mean == pytest.approx((sum(CLIP_MEAN) / 3,)) and pre.std == (0.25,)
    assert "mean averaged" in pre.origin and "data.std" in pre.origin


def test_bad_weights_name():
    for name in ("ResNet18_Weights.NOPE", "Nope_Weights.X", "resnet18"):
        with pytest.raises(UserError, match="source.weights"):
            resolve_preprocessing(data(), name)


def test_weights_without_a_classification_preset():
    with pytest.raises(UserError, match="data.preset") as e:
        resolve_preprocessing(data(), "FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1")
    assert "source.weights" in str(e.value) and "SemanticSegmentation" in str(e.value)
    # a named preset does not need the enum's transforms
    assert resolve_preprocessing(data(preset=ImagePreset.imagenet), "FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1").crop == 224


def test_eval_is_deterministic_and_train_none_equals_eval():
    pre = resolve_preprocessing(data(preset=ImagePreset.imagenet, image_size=64), None)
    img = rgb()
    first = eval_transform(pre)(img)
    assert torch.equal(first, eval_transform(pre)(img))
    torch.manual_seed(0)
    assert torch.equal(train_transform(pre, Augment.none)(img), first)
    assert not is_random(Augment.none) and is_random(Augment.flip) and is_random(Augment.randaugment)


def test_train_flip_is_random():
    pre = resolve_preprocessing(data(preset=ImagePreset.resize, image_size=32), None)
    img = rgb(32, 32)
    plain = eval_transform(pre)(img)
    tf = train_transform(pre, Augment.flip)
    torch.manual_seed(0)
    outs = [tf(img) for _ in range(20)]
    flipped = plain.flip(-1)
    assert all(torch.equal(o, plain) or torch.equal(o, flipped) for o in outs)
    assert any(torch.equal(o, plain) for o in outs) and any(torch.equal(o, flipped) for o in outs)


@pytest.mark.parametrize("augment", list(Augment))
def test_train_output_shape_and_dtype(augment):
    pre = resolve_preprocessing(data(preset=ImagePreset.imagenet, image_size=48), None)
    torch.manual_seed(0)
    out = train_transform(pre, augment)(rgb())
    assert type(out) is torch.Tensor and out.dtype == torch.float32 and out.shape == (3, 48, 48)
    assert torch.isfinite(out).all()
    grey_pre = resolve_preprocessing(data(preset=ImagePreset.imagenet, image_size=48, channels=1), None)
    assert train_transform(grey_pre, augment)(grey()).shape == (1, 48, 48)


def test_augmentation_changes_the_image_sometimes():
    pre = resolve_preprocessing(data(preset=ImagePreset.resize, image_size=32), None)
    img = rgb(32, 32)
    plain = eval_transform(pre)(img)
    for augment in (Augment.trivialaugment, Augment.randaugment):
        torch.manual_seed(0)
        tf = train_transform(pre, augment)
        outs = [tf(img) for _ in range(10)]
        assert any(not torch.equal(o, plain) and not torch.equal(o, plain.flip(-1)) for o in outs), augment


def test_grey_images_and_mode_conversion():
    pre = resolve_preprocessing(data(preset=ImagePreset.resize, image_size=16, channels=1), None)
    out = eval_transform(pre)(grey())
    assert out.shape == (1, 16, 16)
    # an RGB file read for a grey model still gives one channel, and a grey file for an RGB model three
    assert eval_transform(pre)(rgb()).shape == (1, 16, 16)
    rgb_pre = resolve_preprocessing(data(preset=ImagePreset.resize, image_size=16), None)
    three = eval_transform(rgb_pre)(grey())
    assert three.shape == (3, 16, 16)


def test_transforms_and_mixer_pickle():
    pre = resolve_preprocessing(data(), "ResNet18_Weights.IMAGENET1K_V1")
    img = rgb()
    for tf in (eval_transform(pre), train_transform(pre, Augment.trivialaugment)):
        again = pickle.loads(pickle.dumps(tf))
        torch.manual_seed(1)
        a = tf(img)
        torch.manual_seed(1)
        assert torch.equal(again(img), a)
    mixer = batch_mixer(0.2, 1.0, 4)
    again = pickle.loads(pickle.dumps(mixer))
    x, y = torch.rand(3, 3, 8, 8), torch.tensor([0, 1, 2])
    torch.manual_seed(2)
    mx, my = mixer(x, y)
    torch.manual_seed(2)
    ax, ay = again(x, y)
    assert torch.equal(ax, mx) and torch.equal(ay, my) and ay.shape == (3, 4)


def test_batch_mixer_off():
    assert batch_mixer(0.0, 0.0, 5) is None


def test_mixup_soft_labels():
    torch.manual_seed(0)
    mixer = batch_mixer(0.2, 0.0, 5)
    x, y = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    mx, my = mixer(x, y)
    assert mx.shape == x.shape and type(mx) is torch.Tensor
    assert my.shape == (6, 5) and my.dtype.is_floating_point
    assert torch.allclose(my.sum(dim=1), torch.ones(6))
    assert not torch.equal(mx, x)
    # MixUp: lam * the batch + (1 - lam) * the batch rolled by one, images and one-hot labels alike
    rolled = x.roll(1, 0)
    lam = ((mx - rolled).flatten() / (x - rolled).flatten())[0].item()
    assert torch.allclose(mx, lam * x + (1 - lam) * rolled, atol=1e-4)
    one_hot = torch.nn.functional.one_hot(y, 5).float()
    assert torch.allclose(my, lam * one_hot + (1 - lam) * one_hot.roll(1, 0), atol=1e-4)


@pytest.mark.parametrize("mixup, cutmix", [(0.0, 1.0), (0.2, 1.0)])
def test_cutmix_and_both(mixup, cutmix):
    torch.manual_seed(0)
    mixer = batch_mixer(mixup, cutmix, 3)
    x, y = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 2, 1])
    kinds = set()
    for _ in range(20):
        mx, my = mixer(x, y)
        assert mx.shape == x.shape and my.shape == (4, 3)
        assert torch.allclose(my.sum(dim=1), torch.ones(4))
        # CutMix pastes a box of the rolled batch and keeps the other pixels; MixUp blends every pixel
        kinds.add("cutmix" if (mx == x).any() else "mixup")
    assert kinds == ({"mixup", "cutmix"} if mixup > 0 else {"cutmix"})


def test_describe_augment():
    assert describe_augment(Augment.none, 0.0, 0.0) == "train augmentation: none"
    assert describe_augment(Augment.trivialaugment, 0.2, 0.0) == \
        "train augmentation: random horizontal flip + TrivialAugmentWide; mixup alpha 0.2"
    assert describe_augment(Augment.flip, 0.0, 1.0) == "train augmentation: random horizontal flip; cutmix alpha 1"
    both = describe_augment(Augment.randaugment, 0.2, 1.0)
    assert "RandAugment" in both and "mixup alpha 0.2" in both and "cutmix alpha 1" in both
