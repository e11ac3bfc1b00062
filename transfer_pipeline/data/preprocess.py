"""How images become tensors: resize, center crop, normalisation (data.preset) and augmentation (data.augment).

`resolve_preprocessing` turns the config (and the source weights, whose torchvision enum knows
its own resize / crop / mean / std) into plain numbers, `ImagePreprocessing`, that the run can
print and record; the transforms are built from those numbers only. Everything here must pickle:
DataLoader workers receive the transforms and the batch mixer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms import InterpolationMode, v2

from ..errors import UserError
from ..schema import Augment, DataConfig, ImagePreset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# preset -> (resize, crop, interpolation, mean, std); `resize` and `auto` are computed
PRESETS: dict[ImagePreset, tuple[int, int, str, tuple[float, ...], tuple[float, ...]]] = {
    ImagePreset.imagenet: (256, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
    ImagePreset.inception: (342, 299, "bilinear", (0.5,) * 3, (0.5,) * 3),
    ImagePreset.clip: (224, 224, "bicubic", CLIP_MEAN, CLIP_STD),
}


@dataclass(frozen=True)
class ImagePreprocessing:
    resize: int  # shorter side resized to this
    crop: int  # then center crop crop x crop
    interpolation: str  # "bilinear" | "bicubic" (an InterpolationMode value)
    mean: tuple[float, ...]  # one per channel
    std: tuple[float, ...]
    channels: int  # 1 (PIL mode "L") or 3 ("RGB")
    origin: str  # where the numbers come from (the preset or weights enum, and any data.* override)

    def describe(self) -> str:
        """One line for the run log, e.g. 'resize 256 (bilinear), center crop 224, mean [...], ...'."""
        return (f"resize {self.resize} ({self.interpolation}), center crop {self.crop}, mean {_floats(self.mean)}, "
                f"std {_floats(self.std)}, {self.channels} channel{'s' if self.channels > 1 else ''} "
                f"(from {self.origin})")


def _floats(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in values) + "]"


def _single_size(value: Any) -> int | None:
    """A preset's size ([224] in torchvision) as a positive int, or None when it is anything else."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def preset_source(source: Any) -> str | None:
    """What names the preprocessing under data.preset=auto: source.weights (a torchvision enum), else a
    `timm://name.tag` source.path (its pretrained_cfg); None: nothing does."""
    path = getattr(source, "path", None)
    return source.weights or (path if isinstance(path, str) and path.startswith("timm://") else None)


def _from_timm(path: str) -> tuple[int, int, str, tuple[float, ...], tuple[float, ...], str]:
    """timm's pretrained_cfg of `timm://name.tag`: input size, crop_pct (resize = crop / crop_pct), interpolation."""
    import math

    from ..sources.hub import parse

    name = parse(path).name
    try:
        import timm

        cfg = timm.models.get_pretrained_cfg(name)
    except (ImportError, RuntimeError, ValueError, KeyError):
        cfg = None
    if cfg is None or not cfg.input_size:
        raise UserError(f"source.path={path}: timm has no pretrained_cfg for {name!r} to copy the preprocessing from "
                        "(data.preset=auto). Set data.preset (resize, imagenet, inception or clip) and data.image_size.")
    crop = int(cfg.input_size[-1])
    resize = math.floor(crop / (cfg.crop_pct or 1.0)) if cfg.crop_mode in (None, "center") else crop
    return (resize, crop, cfg.interpolation or "bicubic", tuple(map(float, cfg.mean)), tuple(map(float, cfg.std)),
            f"timm pretrained_cfg of {name}")


def _from_weights(name: str) -> tuple[int, int, str, tuple[float, ...], tuple[float, ...], str]:
    if name.startswith("timm://"):
        return _from_timm(name)
    from torchvision.transforms._presets import ImageClassification

    from ..sources.torchvision_weights import weights_enum

    weights = weights_enum(name)
    label = f"{type(weights).__name__}.{weights.name}"
    preset = weights.transforms()  # builds the preset object only: no download
    resize, crop = _single_size(getattr(preset, "resize_size", None)), _single_size(getattr(preset, "crop_size", None))
    if not isinstance(preset, ImageClassification) or resize is None or crop is None:
        raise UserError(f"source.weights={name}: its transforms() is {type(preset).__name__}, not an image "
                        "classification resize + square crop, so data.preset=auto cannot copy it. Set data.preset "
                        "(resize, imagenet, inception or clip) and data.image_size.")
    return (resize, crop, InterpolationMode(preset.interpolation).value, tuple(map(float, preset.mean)),
            tuple(map(float, preset.std)), f"{label}.transforms()")


def _per_channel(given: list[float] | None, preset: tuple[float, ...], channels: int) -> tuple[tuple[float, ...], bool]:
    """data.mean (or std) if given, else the preset's, one value per channel; and whether 3 were averaged to 1."""
    values = tuple(map(float, given if given is not None else preset))
    if len(values) == channels:
        return values, False
    if len(values) == 1:
        return values * channels, False  # one value for every channel (the schema allows 1 or `channels`)
    return (sum(values) / len(values),), True  # grey input, RGB preset: the average of the three channels


def resolve_preprocessing(data: DataConfig, source_weights: str | None) -> ImagePreprocessing:
    """The resize / crop / normalisation numbers for data.preset (auto: the source weights' own transforms())."""
    preset = ImagePreset(data.preset)
    notes: list[str] = []
    if preset == ImagePreset.resize or (preset == ImagePreset.auto and source_weights is None):
        # auto without weights: nothing to copy, so the plain resize the project always did
        crop = data.image_size or 224
        resize, interpolation = crop, "bilinear"
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if data.channels == 3 else ((0.5,), (0.5,))
        origin = "data.preset=resize" if preset == ImagePreset.resize else "data.preset=auto (no source.weights: resize)"
        if data.image_size is not None:
            notes.append(f"data.image_size={data.image_size}")
    else:
        if preset == ImagePreset.auto:
            resize, crop, interpolation, mean, std, origin = _from_weights(source_weights)  # type: ignore[arg-type]
        else:
            (resize, crop, interpolation, mean, std), origin = PRESETS[preset], f"data.preset={preset.value}"
        if data.image_size is not None:
            # keep the preset's resize / crop ratio (256/224: the border that the center crop cuts)
            resize, crop = max(1, round(data.image_size * resize / crop)), data.image_size
            notes.append(f"data.image_size={data.image_size}")
    mean, mean_averaged = _per_channel(data.mean, mean, data.channels)
    std, std_averaged = _per_channel(data.std, std, data.channels)
    averaged = [key for key, done in (("mean", mean_averaged), ("std", std_averaged)) if done]
    if averaged:
        notes.append(f"{' / '.join(averaged)} averaged to 1 channel (data.channels=1)")
    notes += [f"data.{key}" for key in ("mean", "std") if getattr(data, key) is not None]
    return ImagePreprocessing(resize, crop, interpolation, mean, std, data.channels, ", ".join([origin, *notes]))


class _ConvertMode(torch.nn.Module):
    """PIL image -> mode 'L' or 'RGB' (a class, not a lambda, so that it pickles)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, image: Any) -> Any:
        return image if getattr(image, "mode", self.mode) == self.mode else image.convert(self.mode)


def _compose(pre: ImagePreprocessing, augment: list[Any]) -> v2.Compose:
    # geometry on the PIL image, as the weights' own (v1, PIL) transforms do, so the values match them
    return v2.Compose([
        _ConvertMode("L" if pre.channels == 1 else "RGB"),
        v2.Resize(pre.resize, interpolation=InterpolationMode(pre.interpolation), antialias=True),
        v2.CenterCrop(pre.crop),
        *augment,
        v2.PILToTensor(),  # a plain tensor (ToImage would give a tv_tensors.Image subclass)
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(pre.mean), list(pre.std)),
    ])


def eval_transform(pre: ImagePreprocessing) -> Callable[[Any], torch.Tensor]:
    """PIL image -> float32 tensor [channels, crop, crop], no randomness."""
    return _compose(pre, [])


def _augmentations(augment: Augment) -> list[Any]:
    augment = Augment(augment)
    if augment == Augment.none:
        return []
    extra = {Augment.flip: [], Augment.trivialaugment: [v2.TrivialAugmentWide()],
             Augment.randaugment: [v2.RandAugment()]}[augment]
    return [v2.RandomHorizontalFlip(), *extra]


def train_transform(pre: ImagePreprocessing, augment: Augment) -> Callable[[Any], torch.Tensor]:
    """eval_transform's geometry plus data.augment's random transforms (the training split only)."""
    return _compose(pre, _augmentations(augment))


def is_random(augment: Augment) -> bool:
    """Whether train_transform draws random numbers (the feature cache needs fixed inputs)."""
    return Augment(augment) != Augment.none


def describe_augment(augment: Augment, mixup: float, cutmix: float) -> str:
    """One line, e.g. 'train augmentation: random horizontal flip + TrivialAugmentWide; mixup alpha 0.2'."""
    names = {Augment.flip: "random horizontal flip", Augment.trivialaugment: "random horizontal flip + TrivialAugmentWide",
             Augment.randaugment: "random horizontal flip + RandAugment"}
    parts = [names.get(Augment(augment), "none")]
    mixing = [f"{name} alpha {alpha:g}" for name, alpha in (("mixup", mixup), ("cutmix", cutmix)) if alpha > 0]
    if mixing:
        parts.append(" or ".join(mixing) + (" (one of the two per batch, at random)" if len(mixing) == 2 else ""))
    return "train augmentation: " + "; ".join(parts)


class BatchMixer:
    """(x [B, C, H, W] float, y [B] int64) -> (mixed x, soft targets [B, num_classes]): MixUp and/or CutMix."""

    def __init__(self, mixup: float, cutmix: float, num_classes: int) -> None:
        self.mixup, self.cutmix, self.num_classes = mixup, cutmix, num_classes
        mixers = ([v2.MixUp(alpha=mixup, num_classes=num_classes)] if mixup > 0 else []) + \
                 ([v2.CutMix(alpha=cutmix, num_classes=num_classes)] if cutmix > 0 else [])
        self.transform = mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(x, y)


def batch_mixer(mixup: float, cutmix: float, num_classes: int) -> BatchMixer | None:
    """The training batches' MixUp / CutMix (data.mixup / data.cutmix alphas); None when both are 0."""
    if mixup <= 0 and cutmix <= 0:
        return None
    return BatchMixer(mixup, cutmix, num_classes)
