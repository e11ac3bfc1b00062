"""Datasets: `digits` (scikit-learn's real 8x8 digits, offline), `image_folder`, `synthetic`, or your own
`data._target_`: a callable returning {train, val, optional test, optional classes, optional extra splits}.

Extra splits (your own keys beside those, or digits' `shifted` with data.shift) are evaluated every
epoch beside val (`<name>_acc`, `<name>_loss` in metrics.csv and summary.json): an
out-of-distribution split shows what fine-tuning costs in robustness."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..errors import UserError
from ..schema import DataConfig

DIGITS_MEAN, DIGITS_STD = [0.30], [0.38]  # pixel statistics of the 8x8 digits scaled to [0, 1]


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    class_names: list[str] | None  # None: your data did not name its classes (the model's output size counts them)
    test: Dataset | None = None
    extra: dict[str, Dataset] = field(default_factory=dict)  # evaluated every epoch beside val (e.g. `shifted`)

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) if self.class_names is not None else None


def _norm(cfg: DataConfig, mean: list[float], std: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (the schema checked their lengths and that std > 0)."""
    mean, std = list(cfg.mean or mean), list(cfg.std or std)
    mean, std = (mean * cfg.channels if len(mean) == 1 else mean), (std * cfg.channels if len(std) == 1 else std)
    return torch.tensor(mean[:cfg.channels]).view(-1, 1, 1), torch.tensor(std[:cfg.channels]).view(-1, 1, 1)


def _split(labels: torch.Tensor, val_fraction: float, seed: int,
           class_names: list[str] | None = None) -> tuple[list[int], list[int]]:
    """Stratified split: the same fraction of every class goes to validation, at least one sample each side."""
    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)].tolist()
        k = max(1, round(len(idx) * val_fraction))
        if len(idx) - k < 1:
            name = class_names[c] if class_names else c
            raise UserError(f"data.val_fraction={val_fraction}: class {name!r} has {len(idx)} sample(s), so its "
                            "training split would be empty. Lower data.val_fraction, add samples of that class, "
                            "or give train/ and val/ folders.")
        val += idx[:k]
        train += idx[k:]
    return sorted(train), sorted(val)


def digits(cfg: DataConfig, seed: int) -> DataBundle:
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = torch.tensor(raw.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(raw.target)
    wanted = [int(c) for c in (cfg.classes if cfg.classes is not None else range(10))]  # checked by the schema
    keep = torch.isin(labels, torch.tensor(wanted))
    images, labels = images[keep], labels[keep]
    labels = torch.tensor([wanted.index(int(y)) for y in labels])  # digit -> class index in `classes` order
    x = images.unsqueeze(1)
    if cfg.image_size != 8:
        x = torch.nn.functional.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
    mean, std = _norm(cfg, DIGITS_MEAN, DIGITS_STD)
    x = x.expand(-1, cfg.channels, -1, -1)
    x = ((x - mean) / std).contiguous()
    names = [str(c) for c in wanted]
    train, val = _split(labels, cfg.val_fraction, seed, names)
    extra = {"shifted": TensorDataset(shifted(x[val], cfg.shift.value, seed), labels[val])} \
        if cfg.shift.value != "none" else {}
    return DataBundle(TensorDataset(x[train], labels[train]), TensorDataset(x[val], labels[val]), names, extra=extra)


SHIFT_DEGREES, SHIFT_NOISE = 30.0, 0.6


def shifted(x: torch.Tensor, how: str, seed: int) -> torch.Tensor:
    """data.shift: the (normalised) val images rotated by SHIFT_DEGREES, or with Gaussian noise of std SHIFT_NOISE."""
    import math

    if how == "noisy":
        return (x + SHIFT_NOISE * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1))).contiguous()
    a = math.radians(SHIFT_DEGREES)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]]).expand(len(x), 2, 3)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    background = x.amin(dim=(2, 3), keepdim=True)  # the corners the rotation uncovers: the image's own background
    out = torch.nn.functional.grid_sample(x - background, grid, align_corners=False, padding_mode="zeros")
    return (out + background).contiguous()


def synthetic(cfg: DataConfig, seed: int) -> DataBundle:
    """Random images whose class is a fixed linear function of the pixels: learnable, any size."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(cfg.num_samples, cfg.channels, cfg.image_size, cfg.image_size, generator=g)
    teacher = torch.randn(cfg.channels * cfg.image_size ** 2, cfg.num_classes, generator=g)
    y = (x.flatten(1) @ teacher).argmax(1)
    train, val = _split(y, cfg.val_fraction, seed)
    return DataBundle(TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val]),
                      [str(c) for c in range(cfg.num_classes)])


def image_folder(cfg: DataConfig, seed: int, source_weights: str | None = None) -> DataBundle:
    """Image files under data.root: `root/train` + `root/val` (+ `root/test`) if present, else one folder split.

    Preprocessed as the source weights expect (preprocess.py: data.preset), augmented (data.augment)
    in the training split only.
    """
    from ..files import check_path, resolve_path
    from .image_files import ImageFiles, check_images, list_images
    from .preprocess import eval_transform, is_random, resolve_preprocessing, train_transform

    if cfg.root is None:
        raise UserError("data.root: image_folder needs a folder of class folders (data.root=/path/to/images).")
    if cfg.classes is not None:
        raise UserError("data.classes: choosing classes is for digits; for image_folder keep only the class "
                        "folders you want under data.root.")
    root = resolve_path(cfg.root, "data.root")
    check_path(root, "data.root", "dir", cfg.root)
    pre = resolve_preprocessing(cfg, source_weights)
    train_tf, val_tf, random = train_transform(pre, cfg.augment), eval_transform(pre), is_random(cfg.augment)
    mode = "L" if cfg.channels == 1 else "RGB"

    def load(folder: Path) -> tuple[list[str], list]:
        classes, samples = list_images(folder)
        return classes, check_images(samples, cfg.skip_bad_images, "data.root")

    if (root / "train").is_dir() and (root / "val").is_dir():
        splits = {name: load(root / name) for name in ("train", "val", "test") if (root / name).is_dir()}
        classes = splits["train"][0]
        for name, (other, _) in splits.items():
            if other != classes:
                raise UserError(f"data.root: {root}/train and {root}/{name} have different class folders "
                                f"({sorted(set(classes) ^ set(other))[:5]} in one only).")
        test = ImageFiles(splits["test"][1], classes, val_tf, mode) if "test" in splits else None
        return DataBundle(ImageFiles(splits["train"][1], classes, train_tf, mode, augmented=random),
                          ImageFiles(splits["val"][1], classes, val_tf, mode), classes, test)
    if (root / "train").is_dir() or (root / "test").is_dir():
        raise UserError(f"data.root: {root} has a train/ or test/ folder but no val/ folder beside it. Give train/ and "
                        "val/ (and optional test/) folders of class folders, or one folder of class folders split "
                        "by data.val_fraction.")
    classes, samples = load(root)
    train_idx, val_idx = _split(torch.tensor([c for _, c in samples]), cfg.val_fraction, seed, classes)
    return DataBundle(ImageFiles([samples[i] for i in train_idx], classes, train_tf, mode, augmented=random),
                      ImageFiles([samples[i] for i in val_idx], classes, val_tf, mode), classes)


SPLITS = ("train", "val", "test", "classes")
EXTRA_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
RESERVED = ("ema_val", "best", "lr", "epoch", "train_samples", "trainable")  # metric names an extra split would shadow


def from_target(cfg: DataConfig, seed: int) -> DataBundle:
    """Your own data: `data._target_` called with the node's other keys, returning the splits."""
    from ..build import instantiate

    target = cfg.target["_target_"]
    got = instantiate(cfg.target, "data")
    if not isinstance(got, Mapping):
        raise UserError(f"data._target_: {target} returned a {type(got).__name__}; return a dict with 'train' and "
                        "'val' datasets (optional 'test', and 'classes': the class names).")
    extra_names = [k for k in got if k not in SPLITS]
    for k in extra_names:  # extra splits: evaluated every epoch beside val
        if not isinstance(k, str) or not EXTRA_NAME.fullmatch(k) or k in RESERVED:
            raise UserError(f"data._target_: {target} returned the key {k!r}; beside {', '.join(SPLITS)} a key names an "
                            "extra split evaluated every epoch, so it must be a lowercase name (letters, digits, _) "
                            f"that is not one of {', '.join(RESERVED)}, e.g. 'shifted'.")
    for name in ("train", "val"):
        if got.get(name) is None:
            raise UserError(f"data._target_: {target} returned no {name!r} split (keys: {sorted(got)}); return "
                            "{'train': ..., 'val': ..., 'test': ... (optional), 'classes': [...] (optional)}.")
    splits = {name: YourSplit(_check_split(got[name], name, target, cfg.target_key), name, target)
              for name in ("train", "val", "test") if got.get(name) is not None}
    classes = got.get("classes")
    if classes is not None:
        if isinstance(classes, (str, bytes)) or not hasattr(classes, "__len__") or not len(classes):
            raise UserError(f"data._target_: {target} returned classes={classes!r}; give the class names as a "
                            "non-empty list (or leave 'classes' out).")
        classes = [str(c) for c in classes]
    extra = {k: YourSplit(_check_split(got[k], k, target, cfg.target_key), k, target) for k in extra_names
             if got[k] is not None}
    return DataBundle(splits["train"], splits["val"], classes, splits.get("test"), extra)


class YourSplit(Dataset):
    """A split of your own data, whose item errors are told as yours: which split, which item, what it raised
    and where (not "a bug: please report it"). A StopIteration from an item, which would end the DataLoader
    without a word, is one of them. Everything else is the dataset's own (attributes are passed through)."""

    def __init__(self, dataset: Any, split: str, target: str) -> None:
        self.dataset, self.split, self.target = dataset, split, target

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        try:
            return self.dataset[i]
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever the person's code raises is reported as theirs
            from ..model_io import raised_at

            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise UserError(f"data: item {i} of the {self.split} split ({self.target}) raised {type(e).__name__}"
                            f"{': ' + first if first else ''}, at {raised_at(e)}. That is your dataset's code: fix "
                            "the item (or the code that makes it).") from None

    @property
    def augmented(self) -> bool:
        return bool(getattr(self.dataset, "augmented", not isinstance(self.dataset, TensorDataset)))

    def __getattr__(self, name: str) -> Any:  # samples, texts, ...: the dataset's own
        if name.startswith("__") or name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _check_split(ds: Any, name: str, target: str, target_key: str) -> Any:
    """A map-style dataset (indexable, with a length) whose items are (input, target) pairs or dicts with the target."""
    from torch.utils.data import IterableDataset

    where = f"data._target_: {target} returned a {name!r} split"
    if isinstance(ds, IterableDataset) or not (hasattr(ds, "__len__") and hasattr(ds, "__getitem__")):
        raise UserError(f"{where} of type {type(ds).__name__}, which has no length or no indexing; give a map-style "
                        "dataset (torch Dataset with __len__ and __getitem__, or a list of items), so that the "
                        "shuffle is seeded and resumable.")
    if len(ds) == 0:
        raise UserError(f"{where} that is empty (0 items).")
    item = ds[0]
    if isinstance(item, Mapping):
        if target_key not in item:
            raise UserError(f"{where} whose items are dicts with keys {sorted(item)[:8]} and no {target_key!r}; put the "
                            "target under that key or set data.target_key to the key that holds it.")
    elif not (isinstance(item, (tuple, list)) and len(item) == 2):
        kind = f"{type(item).__name__}" + (f" of {len(item)}" if isinstance(item, (tuple, list)) else "")
        raise UserError(f"{where} whose items are a {kind}; each item must be an (input, target) pair or a dict with "
                        f"the target under data.target_key ({target_key!r}) and the model's keyword arguments.")
    return ds


DATASETS: dict[str, Callable[[DataConfig, int], DataBundle]] = {
    "digits": digits, "image_folder": image_folder, "synthetic": synthetic,
}


def augments(cfg: DataConfig) -> bool | None:
    """Whether the training split draws random transforms (None: your own data, which says so when built)."""
    if cfg.target is not None:
        return None
    return cfg.name == "image_folder" and cfg.augment.value != "none" or bool(cfg.mixup or cfg.cutmix)


def build_data(cfg: DataConfig, seed: int, source_weights: str | None = None) -> DataBundle:
    """The splits; `source_weights` (source.weights) chooses image_folder's preprocessing under data.preset=auto."""
    if cfg.target is not None:
        bundle = from_target(cfg, seed)
    elif cfg.name not in DATASETS:
        raise UserError(f"data.name={cfg.name!r}: choose one of {', '.join(DATASETS)}, or give data._target_ (your "
                        "own function returning the splits).")
    elif cfg.name == "image_folder":
        bundle = image_folder(cfg, seed, source_weights)
    else:
        bundle = DATASETS[cfg.name](cfg, seed)
    if cfg.name != "image_folder" and cfg.augment.value != "none":
        raise UserError(f"data.augment={cfg.augment.value}: augmentation presets transform images read from files "
                        "(data=image_folder); here the data is already tensors. Set data.augment=none.")
    return bundle


def seed_worker(worker_id: int) -> None:
    """Each loader worker's python and numpy RNGs from its torch seed (itself from the loader's generator)."""
    import random

    import numpy as np

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def loaders(bundle: DataBundle, batch_size: int, seed: int, num_workers: int = 0, pin_memory: bool = False,
            rank: int = 0, world: int = 1, mixer: Callable | None = None) -> tuple[DataLoader, DataLoader]:
    """The shuffled train loader has its own seeded generator: its order is reproducible and resumable.

    `batch_size` is the global batch: under torchrun each of `world` processes takes its share of
    every batch (batches.py), so the batches are the same whatever the number of processes. Every
    process evaluates the whole validation split (the same numbers everywhere, so the same early
    stopping). Workers persist across epochs (no process start-up per epoch); pinned memory makes
    the copies to a GPU asynchronous. `mixer` (mixup / cutmix) mixes each collated training batch.
    """
    from .batches import ShuffledBatches

    order, workers = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    train = DataLoader(bundle.train, batch_sampler=ShuffledBatches(len(bundle.train), batch_size, order, rank, world),
                       generator=workers, collate_fn=MixedBatches(mixer) if mixer is not None else None,
                       worker_init_fn=seed_worker, num_workers=num_workers, pin_memory=pin_memory,
                       persistent_workers=num_workers > 0)
    val = eval_loader(bundle.val, batch_size * 2, num_workers, pin_memory, persistent=True)
    return train, val


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False,
                persistent: bool = False) -> DataLoader:
    """The one way a split is read for evaluation or prediction: in order, whole, workers seeded like training's.

    `batch_size` as read (evaluation holds no gradients: callers give twice the training batch);
    `pin_memory` when the model is on a GPU (asynchronous copies); `persistent`: keep the workers
    between passes (the val loader, read every epoch), where a one-pass loader lets them end with it.
    """
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, worker_init_fn=seed_worker,
                      num_workers=num_workers, pin_memory=pin_memory, persistent_workers=persistent and num_workers > 0)


class MixedBatches:
    """A collate function: the default one, then mixup / cutmix on the (images, class indices) batch."""

    def __init__(self, mixer: Callable) -> None:
        self.mixer = mixer

    def __call__(self, items: list) -> Any:
        from torch.utils.data import default_collate

        batch = default_collate(items)
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], torch.Tensor)
                and batch[0].ndim == 4):
            raise UserError("data.mixup / data.cutmix: mix batches of images [batch, channels, height, width] with "
                            "class indices; this data's batches are not (set both to 0).")
        return tuple(self.mixer(*batch))
