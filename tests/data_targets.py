"""`data._target_` callables and small models for the task tests (importable as `data_targets`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset, TensorDataset


def _points(n: int, seed: int, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    return x, torch.randn(dim, 3, generator=g)


def tuple_splits(n: int = 300, classes: bool = True, test: bool = True, seed: int = 0) -> dict:
    """(x [8], class) items, 3 classes from a linear teacher: learnable in a few epochs."""
    x, teacher = _points(n, seed)
    y = (x @ teacher).argmax(1)
    cut, cut2 = int(n * 0.6), int(n * 0.8)
    out = {"train": TensorDataset(x[:cut], y[:cut]), "val": TensorDataset(x[cut:cut2], y[cut:cut2])}
    if test:
        out["test"] = TensorDataset(x[cut2:], y[cut2:])
    if classes:
        out["classes"] = ["red", "green", "blue"]
    return out


class DictItems(Dataset):
    """{features, labels} items (or under another target key): the shape of tokenized text."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, key: str = "labels") -> None:
        self.x, self.y, self.key = x, y, key

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"features": self.x[i], "mask": torch.ones(2), self.key: self.y[i]}


def with_shifted(n: int = 300) -> dict:
    """tuple_splits plus 'shifted': the val points with their features scaled and flipped in sign half-way (an
    out-of-distribution split with the same labels)."""
    s = tuple_splits(n, test=False)
    x, y = s["val"].tensors
    return {**s, "shifted": TensorDataset(torch.cat([x[:, :4] * -2.0, x[:, 4:]], 1), y)}


def dict_splits(n: int = 300, key: str = "labels") -> dict:
    s = tuple_splits(n, test=False)
    return {name: DictItems(*s[name].tensors, key=key) for name in ("train", "val")} | {"classes": s["classes"]}


def multilabel_splits(n: int = 400) -> dict:
    """Labels 'a' and 'b' independently on (two thresholds of linear features): 0/1 targets [n, 2]."""
    x, teacher = _points(n, 1)
    y = ((x @ teacher)[:, :2] > 0).float()
    cut = int(n * 0.75)
    return {"train": TensorDataset(x[:cut], y[:cut]), "val": TensorDataset(x[cut:], y[cut:]), "classes": ["a", "b"]}


def regression_splits(n: int = 400) -> dict:
    x, teacher = _points(n, 2)
    y = (x @ teacher)[:, 0]  # [n]: one value per sample (the model outputs [B, 1])
    cut = int(n * 0.75)
    return {"train": TensorDataset(x[:cut], y[:cut]), "val": TensorDataset(x[cut:], y[cut:])}


def bad_splits(kind: str) -> object:
    """What users get wrong: a split missing, empty, items of the wrong kind, an unknown key, a stream."""
    good = tuple_splits(60, test=False)
    if kind == "no_val":
        return {"train": good["train"]}
    if kind == "empty":
        return {"train": good["train"], "val": TensorDataset(torch.zeros(0, 8), torch.zeros(0))}
    if kind == "triples":
        return {"train": [(torch.zeros(8), 0, "x")] * 4, "val": good["val"]}
    if kind == "typo":
        return {"train": good["train"], "valid": good["val"]}
    if kind == "list":
        return [good["train"], good["val"]]
    if kind == "stream":
        class Stream(IterableDataset):
            def __iter__(self):
                yield torch.zeros(8), 0
        return {"train": Stream(), "val": good["val"]}
    if kind == "names":  # class names where indices belong
        return {"train": [(torch.zeros(8), "red")] * 4, "val": [(torch.zeros(8), "red")] * 4}
    if kind == "ragged":  # inputs of different lengths: no batch can be stacked
        return {"train": good["train"], "val": [(torch.zeros(8 + i), 0) for i in range(4)]}
    if kind == "extra_name":  # an extra split must be a lowercase name that shadows no metric
        return {"train": good["train"], "val": good["val"], "Shifted": good["val"]}
    if kind == "extra_reserved":
        return {"train": good["train"], "val": good["val"], "ema_val": good["val"]}
    if kind == "extra_not_a_dataset":
        return {"train": good["train"], "val": good["val"], "shifted": 3}
    if kind == "no_target":
        return {"train": DictItems(*good["train"].tensors, key="target"), "val": good["val"]}
    raise ValueError(kind)


@dataclass
class Output:  # what a Hugging Face model returns: an object with named fields
    logits: torch.Tensor
    hidden: torch.Tensor


class KeywordNet(nn.Module):
    """forward(features, mask) -> Output / dict / tuple (`returns`), as models of other packages do."""

    def __init__(self, num_classes: int = 3, returns: str = "object") -> None:
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.head = nn.Linear(16, num_classes)
        self.returns = returns

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None):
        h = torch.relu(self.body(features))
        logits = self.head(h)
        if self.returns == "dict":
            return {"hidden": h, "logits": logits}
        if self.returns == "tuple":
            return h, logits
        return Output(logits, h)


def mlp(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, num_classes))


def regression_with_a_nan_target(n: int = 400, at: int = 250) -> dict:
    """Finite inputs, one NaN target deep in the training split (found by a later read, not the first step)."""
    s = regression_splits(n)
    x, y = s["train"].tensors
    y = y.clone()
    y[at] = float("nan")
    return {"train": TensorDataset(x, y), "val": s["val"]}


class Faulty(Dataset):
    """tuple_splits' train items, with item `at` wrong in one way (past the first batches, so only the loop sees it)."""

    def __init__(self, base: TensorDataset, fault: str, at: int) -> None:
        self.base, self.fault, self.at = base, fault, at

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        if i != self.at:
            return x, y
        if self.fault == "raises":
            raise ValueError(f"cannot decode record {i}")
        if self.fault == "stop":
            return next(iter([]))  # StopIteration: would end a DataLoader's epoch without a word
        if self.fault == "label":
            return x, torch.tensor(7)  # 3 classes
        if self.fault == "size":
            return torch.zeros(5), y
        if self.fault == "dtype":
            return x, torch.tensor(1.5)
        raise AssertionError(self.fault)


def faulty_splits(fault: str, at: int = 100, n: int = 300) -> dict:
    s = tuple_splits(n, test=False)
    return {"train": Faulty(s["train"], fault, at), "val": s["val"], "classes": s["classes"]}
