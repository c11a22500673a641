"""How an epoch is shared among Train ranks.

Every rank computes the same seeded epoch order (``feed.Feed``), then takes one contiguous block of it, so within
an epoch no sample is read twice and none is missed. With ``equalize`` every rank gets exactly ``n // world_size``
samples (dropping at most ``world_size - 1`` per epoch, a different few each epoch when shuffled): distributed weight
and architecture steps need the same number of batches on every rank, or the all-reduce waits forever.
"""

from __future__ import annotations


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

