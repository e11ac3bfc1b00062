"""`data` (built-in datasets or your own `_target_`) and `predict`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf

from .checks import _is_count, check_count, check_number
from ..errors import UserError

MAX_IMAGE_SIZE = 4096  # larger inputs exhaust memory long before they train


class ImagePreset(Enum):  # data.preset: how images are resized and normalised (image_folder, mode=predict on files)
    auto = "auto"  # the source weights' own transforms() when source.weights is set, else resize
    resize = "resize"  # resize + center crop to data.image_size, data.mean / data.std (ImageNet's by default)
    imagenet = "imagenet"  # resize 256, center crop 224, ImageNet mean / std (most torchvision and timm CNNs)
    inception = "inception"  # resize 342, center crop 299, mean / std 0.5 (Inception v3)
    clip = "clip"  # resize 224 bicubic, center crop 224, CLIP's mean / std


class Augment(Enum):  # data.augment: random transforms of the training split only (torchvision.transforms.v2)
    none = "none"
    flip = "flip"  # random horizontal flip
    trivialaugment = "trivialaugment"  # flip + TrivialAugmentWide
    randaugment = "randaugment"  # flip + RandAugment


class Shift(Enum):  # data.shift: digits only, an out-of-distribution split `shifted` made from the val images
    none = "none"
    rotated = "rotated"  # every val image rotated by 30 degrees
    noisy = "noisy"  # every val image plus Gaussian noise (std 0.6 of the normalised pixels, seeded)


DATA_TARGET_KEYS = ("num_workers", "target_key")  # a data `_target_` node's keys that are ours, not the callable's


@dataclass
class DataConfig:
    name: str = "digits"  # digits | image_folder | synthetic (or the `_target_` of your own data)
    root: Optional[str] = None  # image_folder: a folder of class folders (or train/, val/ and optional test/)
    classes: Optional[List[Any]] = None  # digits: which digits; image_folder: which class folders
    image_size: Optional[int] = 8  # digits/synthetic: pixels; image_folder: the crop (null = the preset's)
    channels: int = 1  # 1 or 3 (digits are grey; 3 repeats the channel for RGB models)
    val_fraction: float = 0.2  # the share of each class kept for validation (when the data has no val split)
    mean: Optional[List[float]] = None  # normalisation; null = the dataset's (or the preset's) own
    std: Optional[List[float]] = None  # as mean: 1 value or 1 per channel; null = the dataset's (or preset's) own
    num_samples: int = 512  # synthetic only
    num_classes: int = 5  # synthetic only
    num_workers: int = 0  # DataLoader worker processes; 0 = load in the main process
    skip_bad_images: bool = False  # image_folder: leave out files that cannot be decoded (counted) instead of failing
    preset: ImagePreset = ImagePreset.auto  # image resize / crop / normalisation (image_folder, predict on files)
    augment: Augment = Augment.none  # image_folder: random transforms of the training split
    mixup: float = 0.0  # classification: MixUp alpha on training batches (e.g. 0.2); 0 = off
    cutmix: float = 0.0  # classification: CutMix alpha on training batches (e.g. 1.0); 0 = off
    shift: Shift = Shift.none  # digits: add the split `shifted` (rotated | noisy val images), evaluated every epoch
    target_key: str = "labels"  # dict items: the target's key; the other keys go to the model as keyword arguments
    target: Optional[Dict[str, Any]] = None  # your own data: the `_target_` node (set from `data._target_`)

    def __post_init__(self) -> None:
        if self.image_size is not None:
            check_count("data.image_size", self.image_size, 1, MAX_IMAGE_SIZE,
                        want=f"a whole number of pixels from 1 to {MAX_IMAGE_SIZE}")
        if self.channels not in (1, 3):
            raise UserError(f"data.channels={self.channels}: choose 1 (grey) or 3 (RGB).")
        check_number("data.val_fraction", self.val_fraction, 0, 1, low_open=True, high_open=True,
                     want="a fraction between 0 and 1 (both excluded): the share of each class kept for validation")
        check_count("data.num_workers", self.num_workers, 0, 256)
        check_count("data.num_samples", self.num_samples, 2)
        check_count("data.num_classes", self.num_classes, 2)
        for key in ("mixup", "cutmix"):
            check_number(f"data.{key}", getattr(self, key), 0, 100,
                         want="a Beta distribution alpha > 0 (e.g. 0.2 for mixup, 1.0 for cutmix), or 0 for off")
        if not self.target_key.strip():
            raise UserError("data.target_key: empty; name the key of the target in your dict items (e.g. labels).")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is None:
                continue
            if len(values) not in (1, self.channels):
                raise UserError(f"data.{key}={list(values)}: give 1 value or one per channel ({self.channels}, "
                                "data.channels).")
            for i, v in enumerate(values):
                check_number(f"data.{key}[{i}]", v, 0 if key == "std" else None, low_open=key == "std",
                             want="a finite number > 0 (a std of 0 divides by zero)" if key == "std" else "")
        if self.shift != Shift.none and (self.name != "digits" or self.target is not None):
            raise UserError(f"data.shift={self.shift.value}: the shifted split is made for data=digits; with your own "
                            "data return the extra split from data._target_ (any key beside train, val and test, "
                            "e.g. 'shifted': a dataset) and it is evaluated every epoch.")
        if self.name == "digits" and self.classes is not None and self.target is None:
            wanted = list(self.classes)
            if not wanted or len(set(wanted)) != len(wanted) or not all(_is_count(c) and 0 <= c <= 9 for c in wanted):
                raise UserError(f"data.classes={wanted}: digits are 0-9, each at most once, at least one.")


def data_config(node: Any) -> DataConfig:
    """`data` as composed: the built-in node (typed by conf/data's schema), or your own `_target_` node.

    A `_target_` node is free-form (its keys are the callable's arguments) except for
    DATA_TARGET_KEYS, which configure the loaders; anything else is checked against DataConfig.
    """
    if node is None:
        return DataConfig()
    if isinstance(node, DataConfig):
        return node
    node = dict(node)
    if "_target_" in node:
        ours = {k: node.pop(k) for k in DATA_TARGET_KEYS if k in node}
        if not isinstance(node["_target_"], str) or not node["_target_"].strip():
            raise UserError(f"data._target_={node['_target_']!r}: the dotted path of a function (or class) that "
                            "returns the splits, e.g. my_data.splits.")
        return DataConfig(name=node["_target_"], target=node, **ours)
    from omegaconf.errors import ConfigKeyError, ValidationError

    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), node))  # type: ignore[return-value]
    except (ConfigKeyError, ValidationError) as e:
        raise UserError(f"data.{getattr(e, 'key', '') or ''}: {str(e).splitlines()[0]} (the built-in data keys are "
                        f"{', '.join(f.name for f in DataConfig.__dataclass_fields__.values())}; your own data "
                        "needs data._target_).") from None


@dataclass
class PredictConfig:
    input: Optional[str] = None  # an image file or a folder of them (any depth); null = the data's test split (else val)
    top_k: int = 5  # classification: the k most likely classes in predictions.csv
    threshold: float = 0.5  # multilabel: a label is predicted when its probability reaches this

    def __post_init__(self) -> None:
        check_count("predict.top_k", self.top_k, 1, want="a whole number of classes >= 1")
        check_number("predict.threshold", self.threshold, 0, 1, want="a probability in [0, 1]")
        if self.input is not None and not self.input.strip():
            raise UserError("predict.input: empty; give an image file or a folder of images (or null: the data's "
                            "test split).")
