"""Datasets: `digits` (scikit-learn's real 8x8 digits, offline), `image_folder`, `synthetic`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..errors import UserError
from ..schema import DataConfig

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
DIGITS_MEAN, DIGITS_STD = [0.30], [0.38]  # pixel statistics of the 8x8 digits scaled to [0, 1]


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


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
    return DataBundle(TensorDataset(x[train], labels[train]), TensorDataset(x[val], labels[val]), names)


def synthetic(cfg: DataConfig, seed: int) -> DataBundle:
    """Random images whose class is a fixed linear function of the pixels: learnable, any size."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(cfg.num_samples, cfg.channels, cfg.image_size, cfg.image_size, generator=g)
    teacher = torch.randn(cfg.channels * cfg.image_size ** 2, cfg.num_classes, generator=g)
    y = (x.flatten(1) @ teacher).argmax(1)
    train, val = _split(y, cfg.val_fraction, seed)
    return DataBundle(TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val]),
                      [str(c) for c in range(cfg.num_classes)])


def image_folder(cfg: DataConfig, seed: int) -> DataBundle:
    """Image files under data.root: `root/train` + `root/val` if present, else one folder split (image_files.py)."""
    from torchvision import transforms

    from ..paths import check_path, resolve_path
    from .image_files import ImageFiles, check_images, list_images

    if cfg.root is None:
        raise UserError("data.root: image_folder needs a folder of class folders (data.root=/path/to/images).")
    if cfg.classes is not None:
        raise UserError("data.classes: choosing classes is for digits; for image_folder keep only the class "
                        "folders you want under data.root.")
    root = resolve_path(cfg.root, "data.root")
    check_path(root, "data.root", "dir", cfg.root)
    mean, std = _norm(cfg, IMAGENET_MEAN if cfg.channels == 3 else [0.5], IMAGENET_STD if cfg.channels == 3 else [0.5])
    common = [transforms.Resize(cfg.image_size), transforms.CenterCrop(cfg.image_size)]
    tail = [transforms.ToTensor(), transforms.Normalize(mean.flatten().tolist(), std.flatten().tolist())]
    train_tf = transforms.Compose(common + [transforms.RandomHorizontalFlip()] + tail)
    val_tf = transforms.Compose(common + tail)
    mode = "L" if cfg.channels == 1 else "RGB"

    def load(folder: Path) -> tuple[list[str], list]:
        classes, samples = list_images(folder)
        return classes, check_images(samples, cfg.skip_bad_images, "data.root")

    if (root / "train").is_dir() and (root / "val").is_dir():
        (classes, train), (val_classes, val) = load(root / "train"), load(root / "val")
        if classes != val_classes:
            raise UserError(f"data.root: {root}/train and {root}/val have different class folders "
                            f"({sorted(set(classes) ^ set(val_classes))[:5]} in one only).")
        return DataBundle(ImageFiles(train, classes, train_tf, mode, augmented=True),
                          ImageFiles(val, classes, val_tf, mode), classes)
    classes, samples = load(root)
    train_idx, val_idx = _split(torch.tensor([c for _, c in samples]), cfg.val_fraction, seed, classes)
    return DataBundle(ImageFiles([samples[i] for i in train_idx], classes, train_tf, mode, augmented=True),
                      ImageFiles([samples[i] for i in val_idx], classes, val_tf, mode), classes)


DATASETS: dict[str, Callable[[DataConfig, int], DataBundle]] = {
    "digits": digits, "image_folder": image_folder, "synthetic": synthetic,
}


def augments(cfg: DataConfig) -> bool:
    """Whether the training split draws random transforms (image_folder flips its training images)."""
    return cfg.name == "image_folder"


def build_data(cfg: DataConfig, seed: int) -> DataBundle:
    if cfg.name not in DATASETS:
        raise UserError(f"data.name={cfg.name!r}: choose one of {', '.join(DATASETS)}.")
    return DATASETS[cfg.name](cfg, seed)


def seed_worker(worker_id: int) -> None:
    """Each loader worker's python and numpy RNGs from its torch seed (itself from the loader's generator)."""
    import random

    import numpy as np

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def loaders(bundle: DataBundle, batch_size: int, seed: int, num_workers: int = 0, pin_memory: bool = False,
            rank: int = 0, world: int = 1) -> tuple[DataLoader, DataLoader]:
    """The shuffled train loader has its own seeded generator: its order is reproducible and resumable.

    `batch_size` is the global batch: under torchrun each of `world` processes takes its share of
    every batch (batches.py), so the batches are the same whatever the number of processes. Every
    process evaluates the whole validation split (the same numbers everywhere, so the same early
    stopping). Workers persist across epochs (no process start-up per epoch); pinned memory makes
    the copies to a GPU asynchronous.
    """
    from .batches import ShuffledBatches

    order, workers = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    common = dict(worker_init_fn=seed_worker, num_workers=num_workers, pin_memory=pin_memory,
                  persistent_workers=num_workers > 0)
    train = DataLoader(bundle.train, batch_sampler=ShuffledBatches(len(bundle.train), batch_size, order, rank, world),
                       generator=workers, **common)
    val = DataLoader(bundle.val, batch_size=batch_size * 2, shuffle=False, **common)
    return train, val
