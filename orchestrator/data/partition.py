"""How an epoch is shared among Train ranks (and among a rank's DataLoader workers).

Every rank computes the same seeded epoch order, then takes one contiguous block of it, so within an epoch no
sample is read twice and none is missed. With ``equalize`` every rank gets exactly ``n // world_size`` samples
(dropping at most ``world_size - 1`` per epoch, a different few each epoch when shuffled): distributed weight
and architecture steps need the same number of batches on every rank, or the all-reduce waits forever.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler


def check_rank(rank: int, world_size: int) -> None:
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")


def block(n: int, rank: int, world_size: int, equalize: bool) -> tuple[int, int]:
    """The contiguous share ``[start, stop)`` of ``n`` items that ``rank`` takes."""
    check_rank(rank, world_size)
    if equalize:
        per = n // world_size
        return rank * per, rank * per + per
    return rank * n // world_size, (rank + 1) * n // world_size


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The same generator on every rank for a given (seed, epoch)."""
    return np.random.default_rng([seed, epoch])


class RankSampler(Sampler[int]):
    """Indices of a map-style dataset for one rank: a seeded per-epoch permutation (or the natural order),
    cut into contiguous blocks. Unlike ``DistributedSampler`` it never pads with repeated samples."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1, shuffle: bool = False, seed: int = 0,
                 equalize: bool = True) -> None:
        check_rank(rank, world_size)
        self.n, self.rank, self.world_size = n, rank, world_size
        self.shuffle, self.seed, self.equalize = shuffle, seed, equalize
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        start, stop = block(self.n, self.rank, self.world_size, self.equalize)
        return stop - start

    def __iter__(self) -> Iterator[int]:
        order = epoch_rng(self.seed, self.epoch).permutation(self.n) if self.shuffle else np.arange(self.n)
        start, stop = block(self.n, self.rank, self.world_size, self.equalize)
        return iter(order[start:stop].tolist())
