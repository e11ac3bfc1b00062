"""`trainer.cache_features`: the frozen part's outputs computed once, the head trained on them.

When everything that trains in the whole run (at the start and after every event) lies inside
one module -- the head -- and the rest of the model gives the same output every time it sees an
input (its BatchNorm layers hold their statistics, no dropout, no random augmentation of the
data), then each epoch recomputes the same head inputs. They are computed once here, for the
train and validation splits, and the loop feeds them to the head alone: the same batches in the
same order (the loader keeps its generator), so the result is that of training without the
cache, at the cost of the head only.

`cache_plan` decides from names, modes and the data alone (what `mode=plan` prints);
`head_inputs` then checks on a real batch that the model's output is the head's output, computed
once from one tensor, and `changing_inputs` that the frozen part gives the head the same inputs in
training as in the cache (no randomness, no train/eval branch), before anything is cached.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..names import split_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachePlan:
    head: str | None  # the module trained on cached inputs; None where the cache does not apply
    reason: str = ""  # why not

    def describe(self) -> str:
        if self.head is None:
            return f"trainer.cache_features: does not apply, so every epoch runs the whole model: {self.reason}."
        return (f"trainer.cache_features: the inputs of `{self.head}` are computed once (the frozen rest of the model, "
                f"train and val splits); each epoch then trains `{self.head}` alone on them.")


def _head_of(names: Iterable[str]) -> str:
    """The deepest module holding every one of the parameter names ('' for the root)."""
    parts = [split_name(n)[0].split(".") if split_name(n)[0] else [] for n in names]
    common: list[str] = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def augmented(dataset: Dataset) -> bool:
    """Whether a training split may draw random transforms: tensors never do; other datasets say so themselves."""
    return bool(getattr(dataset, "augmented", not isinstance(dataset, TensorDataset)))


def cache_plan(model: nn.Module, trainable_in_run: Iterable[str], bn_modes: Mapping[str, str],
               data_augmented: bool | None) -> CachePlan:
    """Whether the cache applies (`data_augmented` None: the data is not known yet, as in mode=plan)."""
    names = sorted(trainable_in_run)
    if not names:
        return CachePlan(None, "nothing trains")
    head = _head_of(names)
    if not head:
        shown = ", ".join(sorted({split_name(n)[0].split(".")[0] for n in names})[:6])
        return CachePlan(None, f"what trains in this run ({shown}) is not inside one module that could be fed cached "
                               "inputs; train only the head (e.g. freeze.trainable=[fc]) to use the cache")
    inside = head + "."
    for name, m in model.named_modules():
        if name == head or name.startswith(inside) or head.startswith(name + ".") or name == "":
            continue
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return CachePlan(None, f"`{name}` in the frozen part is a dropout layer (p={m.p}): it draws new masks every "
                                   "step, so its outputs cannot be reused")
    for name, mode in bn_modes.items():
        if not (name == head or name.startswith(inside)) and mode == "train":
            return CachePlan(None, f"BatchNorm layer `{name}` in the frozen part updates its statistics "
                                   "(freeze.bn / freeze.bn_overrides say train), so its outputs change every step")
    if data_augmented:
        return CachePlan(None, "the training data draws random transforms (augmentation), so the inputs differ every "
                               "epoch; a dataset without them can say so with an attribute `augmented = False`")
    return CachePlan(head)


def head_inputs(model: nn.Module, head: nn.Module, x: Any, output: Any = None) -> tuple[str | None, torch.Tensor | None]:
    """Run the model on `x` watching the head: (None, the head's input) when the model's output is the head's
    output, computed once from one tensor (so the head alone can stand in for the model), else (why not, None)."""
    seen: list[tuple[Any, Any]] = []

    def watch(module: nn.Module, args: tuple, out: Any) -> None:
        seen.append((args, out))

    from ..model_io import call, pick_output

    handle = head.register_forward_hook(watch)
    try:
        with torch.no_grad():
            out = pick_output(call(model, x), output)
    finally:
        handle.remove()
    if len(seen) != 1:
        return f"the head runs {len(seen)} times in one forward pass", None
    args, head_out = seen[0]
    if len(args) != 1 or not isinstance(args[0], torch.Tensor):
        return "the head takes more than one tensor", None
    if out is not head_out:
        return "the model changes the head's output before returning it", None
    return None, args[0]


def _head_input(model: nn.Module, head: nn.Module, x: Any) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        from ..model_io import call

        with torch.no_grad():
            call(model, x)
    finally:
        handle.remove()
    return seen[0]


def changing_inputs(model: nn.Module, head: nn.Module, x: Any, bn_modes: Mapping[str, str]) -> str | None:
    """Why the head's inputs are not the same every time (None when they are): the frozen part run twice as
    training runs it (train mode, BatchNorm as freeze.bn says) and once as the cache is computed (eval mode).
    This catches what no module type shows: `F.dropout(x, training=self.training)`, noise added in a forward,
    a branch on `self.training`."""
    modules = dict(model.named_modules())
    was_training = model.training
    try:
        model.train()
        for name, mode in bn_modes.items():
            if mode != "train" and name in modules:
                modules[name].eval()
        first, second = _head_input(model, head, x), _head_input(model, head, x)
        model.eval()
        cached = _head_input(model, head, x)
    finally:
        model.train(was_training)

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-6)

    if not same(first, second):
        return ("the frozen part gives other outputs each time it sees the same input in training (random: a "
                "functional dropout or added noise in a forward), so cached outputs would not be what training sees")
    if not same(first, cached):
        return ("the frozen part computes something else in train mode than in eval mode (it branches on "
                "self.training), so outputs cached in eval mode would not be what training sees")
    return None


class CachedFeatures(Dataset):
    """(head input, target) pairs; a batch is two index operations, not one per sample."""

    augmented = False

    def __init__(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        self.features, self.targets = features, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[i], self.targets[i]

    def __getitems__(self, idx: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        t = torch.as_tensor(idx)
        return [(self.features[t], self.targets[t])]


def _one_batch(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return items[0]  # CachedFeatures.__getitems__ returns the whole batch as one item


@torch.no_grad()
def compute(model: nn.Module, head: nn.Module, dataset: Dataset, engine: Any, batch_size: int) -> CachedFeatures:
    """The head's inputs for every sample of `dataset`, in order, kept in host memory."""
    feats: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []

    def grab(module: nn.Module, args: tuple) -> None:
        feats.append(args[0].detach().to("cpu", copy=True))

    from ..model_io import call, split_batch

    handle = head.register_forward_pre_hook(grab)
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            x, y = split_batch(batch, engine.target_key)
            with engine.autocast():
                call(model, engine.inputs(x))
            targets.append(torch.as_tensor(y))
    finally:
        handle.remove()
    return CachedFeatures(torch.cat(feats), torch.cat(targets))


def cached_loader(features: CachedFeatures, like: DataLoader, shuffled: bool) -> DataLoader:
    """A loader over the cache with the batches of `like`: for the train split the same sampler type with
    the same shuffling generator, so the order is the one the uncached run would see."""
    if shuffled:
        from ..data.batches import ShuffledBatches

        old = like.batch_sampler
        sampler = ShuffledBatches(len(features), old.batch_size, old.generator, old.rank, old.world)
        return DataLoader(features, batch_sampler=sampler, generator=like.generator, collate_fn=_one_batch)
    return DataLoader(features, batch_size=like.batch_size, shuffle=False, collate_fn=_one_batch)


def feature_bytes(sample: torch.Tensor, n: int) -> int:
    return sample[0].numel() * sample.element_size() * n


def available_memory() -> int | None:
    """Bytes of host memory available now (Linux), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@contextmanager
def _rng_kept() -> Iterator[None]:
    """The global RNG states as they were before: what the checks and the caching drew (a forward that draws,
    a DataLoader's seed) must not change a later dropout mask, or the run would differ from one without cache."""
    state = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_rng_state(state)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def prepare(model: nn.Module, trainable_in_run: Iterable[str], bn_modes: Mapping[str, str], loaders: tuple,
            engine: Any) -> tuple[str | None, tuple]:
    """The head to train and the loaders to train it on: cached ones when the cache applies, else the given."""
    with _rng_kept():
        return _prepare(model, trainable_in_run, bn_modes, loaders, engine)


def _prepare(model: nn.Module, trainable_in_run: Iterable[str], bn_modes: Mapping[str, str], loaders: tuple,
             engine: Any) -> tuple[str | None, tuple]:
    train_loader, val_loader = loaders
    plan = cache_plan(model, trainable_in_run, bn_modes, augmented(train_loader.dataset))
    head = model.get_submodule(plan.head) if plan.head is not None else None
    was_training = model.training
    model.eval()
    try:
        if head is not None:
            from ..model_io import first_rows

            x, _ = engine.batch(next(iter(val_loader)))
            why, sample = head_inputs(model, head, first_rows(x, 2), engine.output)
            if why is None:
                why = changing_inputs(model, head, first_rows(x, 2), bn_modes)
            if why is not None:
                plan = CachePlan(None, why)
            else:
                n = len(train_loader.dataset) + len(val_loader.dataset)
                need, free = feature_bytes(sample, n), available_memory()
                if free is not None and need > free // 2:
                    plan = CachePlan(None, f"the cache would take {need / 2**30:.1f} GiB of memory, more than half of "
                                           f"the {free / 2**30:.1f} GiB available")
        if plan.head is None:
            log.warning("%s", plan.describe())
            return None, loaders
        log.info("%s", plan.describe())
        size = train_loader.batch_sampler.batch_size * 2
        train_cache = compute(model, head, train_loader.dataset, engine, size)
        val_cache = compute(model, head, val_loader.dataset, engine, size)
    finally:
        model.train(was_training)
    log.info("trainer.cache_features: cached %d + %d head inputs of shape %s (%.1f MiB)", len(train_cache),
             len(val_cache), tuple(train_cache.features.shape[1:]),
             (train_cache.features.nbytes + val_cache.features.nbytes) / 2**20)
    return plan.head, (cached_loader(train_cache, train_loader, True), cached_loader(val_cache, val_loader, False))
