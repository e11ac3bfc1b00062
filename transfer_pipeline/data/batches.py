"""The training batches: a seeded shuffle cut into global batches, each split between the processes.

`ShuffledBatches` draws the epoch's order from a generator of its own, the way a shuffling
DataLoader draws it from its generator, so a single process sees the same batches as before,
and N processes under torchrun each take a contiguous share of every one of those global
batches: the batches, and so the result, do not depend on the number of processes. It also
answers which samples made batch k of this epoch, which the loop uses to say whether a NaN loss
came from the data.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ShuffledBatches(Sampler[list[int]]):
    def __init__(self, n: int, batch_size: int, generator: torch.Generator, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.generator, self.rank, self.world = n, batch_size, generator, rank, world
        self.order: list[int] | None = None  # this epoch's shuffle, once iteration has begun

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        # a last batch smaller than the number of processes would leave one with nothing: it is dropped
        return full + (1 if rest and rest >= self.world else 0)

    def global_size(self, k: int) -> int:
        """Samples in global batch k (all processes together)."""
        return min(self.batch_size, self.n - k * self.batch_size)

    def global_batch(self, k: int) -> list[int]:
        assert self.order is not None, "global_batch() is asked during an epoch"
        return self.order[k * self.batch_size:(k + 1) * self.batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        # One draw first, as a shuffling DataLoader makes from its generator for its workers' seed, so the
        # order is the one runs had before this sampler; the loader's own generator (worker seeds) is
        # another, so neither workers nor persistent workers change the order.
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        self.order = torch.randperm(self.n, generator=self.generator).tolist()  # python ints: slicing is cheap
        size, world, rank = self.batch_size, self.world, self.rank
        for k in range(len(self)):
            batch = self.order[k * size:(k + 1) * size]
            if world == 1:
                yield batch
                continue
            share, extra = divmod(len(batch), world)  # the first `extra` processes take one more
            start = rank * share + min(rank, extra)
            yield batch[start:start + share + (rank < extra)]


def steps_in_epoch(batches: int, accumulate: int) -> int:
    """Optimizer steps from `batches` batches, `accumulate` batches a step (a short last window counts)."""
    return math.ceil(batches / accumulate)
