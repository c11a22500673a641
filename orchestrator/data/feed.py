"""Batches for one rank, epoch after epoch, from any step: the one data path of search, warm-up and retrain.

A *split* (in-memory tensors, some images of an ImageFolder tree, or some rows of a shard set) knows its size,
an epoch's read order, and how to load given positions. A ``Feed`` turns a split into this rank's batches:

- **Order from the seed.** Every rank computes the same seeded order of an epoch and takes its contiguous block
  (``partition.block``); batch ``b`` of the epoch is the ``b``-th run of ``batch_size`` positions of that block.
- **Parallel decode that overlaps compute.** Batches are built in DataLoader worker processes (``workers``), each
  prepares ``prefetch`` batches ahead; worker ``w`` builds batches ``start + w``, ``start + w + W``, ... and the
  DataLoader hands them out in order, so the sequence does not depend on the number of workers.
- **uint8 to the device.** JPEG data (ImageFolder, shards) leaves the loader processes as uint8 batches, in pinned
  memory when the feed is for a CUDA device (``pin_memory``; in this process too when there are no loader
  processes); ``Runtime.batch`` copies them asynchronously and normalises them on the device. The digits stay
  float tensors in memory.
- **Exact resume.** ``stream(start)`` begins at any global batch; the random augmentation of a batch is seeded by
  (seed, stream, epoch, rank, batch), so a resumed run sees the same pixels as an uninterrupted one, whatever
  the number of loader workers. (With another world size every rank's share changes: see the README.)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from orchestrator.data.manifest import Index
from orchestrator.data.partition import block, check_rank
from orchestrator.data.shards import ShardRows
from orchestrator.data.transforms import open_image

Batch = tuple[torch.Tensor, torch.Tensor]


def _seed(*parts: Any) -> int:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# ------------------------------------------------------------------------------------------------------ splits
class _RandomAccess:
    """Rows any of which loads as cheaply as any other (in memory, or one file each): a plain permutation."""

    def __len__(self) -> int:
        raise NotImplementedError

    def order(self, rng: np.random.Generator | None) -> np.ndarray:
        return rng.permutation(len(self)) if rng is not None else np.arange(len(self))


class TensorRows(_RandomAccess):
    """A split held in memory as tensors (the embedded digits): loading is indexing, no decode, no augmentation."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, ids: Sequence[int] | None = None) -> None:
        self.x, self.y = x, y
        self.labels = y.numpy()
        self._ids = np.asarray(ids if ids is not None else range(len(y)), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.y)

    def ids(self, positions: np.ndarray) -> np.ndarray:
        return self._ids[positions]

    def load_batch(self, positions: np.ndarray) -> Batch:
        idx = torch.from_numpy(np.ascontiguousarray(positions))
        return self.x[idx], self.y[idx]


class FolderRows(_RandomAccess):
    """Some images of an ImageFolder tree, by position in torchvision's order, decoded with one transform."""

    def __init__(self, samples: Sequence[tuple[str, int]], positions: Sequence[int], transform: Callable) -> None:
        self.samples, self.positions = samples, np.asarray(positions, dtype=np.int64)
        self.labels = np.asarray([samples[p][1] for p in self.positions], dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.positions)

    def ids(self, positions: np.ndarray) -> np.ndarray:
        return self.positions[positions]

    def load(self, positions: np.ndarray) -> list[tuple[Any, int]]:
        out = []
        for p in self.positions[positions].tolist():
            path, label = self.samples[p]
            img = open_image(path)  # 8-bit RGB; anything undecodable is one OSError naming the file
            out.append((self.transform(img), label))
        return out


def concat_rows(a: Any, b: Any) -> Any:
    """One split made of two of the same kind (retraining trains on the search's weight and held-out splits)."""
    if isinstance(a, TensorRows):
        return TensorRows(torch.cat([a.x, b.x]), torch.cat([a.y, b.y]), np.concatenate([a._ids, b._ids]))
    if isinstance(a, FolderRows):
        return FolderRows(a.samples, np.concatenate([a.positions, b.positions]), a.transform)

    rows = Index(*(np.concatenate([x, y]) for x, y in zip(
        (a.rows.id, a.rows.label, a.rows.shard, a.rows.row_group, a.rows.row),
        (b.rows.id, b.rows.label, b.rows.shard, b.rows.row_group, b.rows.row))))
    return ShardRows(a.shards, rows, a.transform, a.decode)


# ------------------------------------------------------------------------------------------------------ batches
def _collate(items: list[tuple[Any, int]]) -> Batch:
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items], dtype=torch.int64,
                                                              device="cpu")


def load_batch(rows: Any, positions: np.ndarray, seed: int) -> Batch:
    """One batch, its random augmentation drawn from ``seed`` alone (the process's own RNG is left as it was)."""
    if hasattr(rows, "load_batch"):
        return rows.load_batch(positions)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _collate(rows.load(positions))


def _pinned(batches: Iterator[Batch]) -> Iterator[Batch]:
    """Batches copied into page-locked memory (what the DataLoader's pinning thread does for loader processes)."""
    for x, y in batches:
        yield x.pin_memory(), y.pin_memory()


class _EpochBatches(IterableDataset):
    """The batches ``start..`` of one epoch of one rank; DataLoader worker ``w`` of ``W`` builds ``start+w+kW``."""

    def __init__(self, rows: Any, mine: np.ndarray, batch_size: int, count: int, start: int, seeds: tuple) -> None:
        self.rows, self.mine, self.batch_size, self.count, self.start, self.seeds = \
            rows, mine, batch_size, count, start, seeds

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        w, n = (info.id, info.num_workers) if info is not None else (0, 1)
        for b in range(self.start + w, self.count, n):
            positions = self.mine[b * self.batch_size:(b + 1) * self.batch_size]
            yield load_batch(self.rows, positions, _seed(*self.seeds, b))


class Feed:
    """This rank's batches of one split. ``shuffle`` (weight and architecture steps) draws a new seeded order
    every epoch and keeps only full batches, the same number on every rank; without it (evaluation) every item
    is read exactly once across the ranks, the last batch possibly short."""

    def __init__(self, rows: Any, *, batch_size: int, rank: int = 0, world: int = 1, shuffle: bool = True,
                 seed: int = 0, stream: str = "train", workers: int = 0, prefetch: int = 2, pin_memory: bool = False,
                 mp_context: str | None = None) -> None:
        check_rank(rank, world)
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.rows, self.batch_size, self.rank, self.world = rows, batch_size, rank, world
        self.shuffle, self.seed, self.name = shuffle, seed, stream
        self.workers, self.prefetch, self.pin_memory, self.mp_context = workers, prefetch, pin_memory, mp_context
        start, stop = block(len(rows), rank, world, equalize=shuffle)
        self.items = stop - start  # this rank's items per epoch
        self.batches_per_epoch = self.items // batch_size if shuffle else math.ceil(self.items / batch_size)

    def positions(self, epoch: int) -> np.ndarray:
        """This rank's positions of ``epoch``, in read order."""
        rng = np.random.default_rng(_seed(self.seed, self.name, epoch)) if self.shuffle else None
        order = self.rows.order(rng)
        start, stop = block(len(order), self.rank, self.world, equalize=self.shuffle)
        return order[start:stop]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Batches ``start..`` of ``epoch`` (decoded by ``workers`` processes when there are any). With loader
        processes they start, and begin decoding, as soon as this is called."""
        if not 0 <= start <= self.batches_per_epoch:
            raise ValueError(f"batch {start} is outside epoch of {self.batches_per_epoch} batches")
        ds = _EpochBatches(self.rows, self.positions(epoch), self.batch_size, self.batches_per_epoch, start,
                           (self.seed, self.name, epoch, self.rank))
        workers = min(self.workers, max(0, self.batches_per_epoch - start))
        if workers == 0:
            return _pinned(iter(ds)) if self.pin_memory and torch.cuda.is_available() else iter(ds)
        # A generator of its own: the DataLoader would otherwise draw its workers' base seed from the process's
        # global RNG, and a resumed run's later global draws (dropout) would differ from an uninterrupted one's.
        gen = torch.Generator(device="cpu").manual_seed(_seed(self.seed, self.name, epoch, self.rank, start))
        return iter(DataLoader(ds, batch_size=None, num_workers=workers, prefetch_factor=self.prefetch,
                               pin_memory=self.pin_memory, persistent_workers=False, generator=gen,
                               multiprocessing_context=self.mp_context))

    def stream(self, start: int = 0) -> Iterator[Batch]:
        """Batches without end, from global batch ``start`` (epoch ``start // batches_per_epoch``). The next
        epoch's loader processes start before the last batch of the current one is handed out, so an epoch
        boundary costs no start-up wait."""
        if self.batches_per_epoch < 1:
            raise ValueError(f"{self.name}: rank {self.rank} of {self.world} gets {self.items} items, fewer than "
                             f"one batch of {self.batch_size}: lower the batch size or use fewer workers")
        epoch, b = divmod(start, self.batches_per_epoch)
        it = self.epoch(epoch, b)
        while True:
            nxt = None
            for i in range(b, self.batches_per_epoch):
                batch = next(it)
                if i == self.batches_per_epoch - 1:
                    nxt = self.epoch(epoch + 1)
                yield batch
            it, epoch, b = nxt, epoch + 1, 0

    def ids(self, epoch: int) -> np.ndarray:
        """The item ids this rank reads in ``epoch`` (whole batches only), for audits and tests."""
        n = self.batches_per_epoch * self.batch_size if self.shuffle else self.items
        return self.rows.ids(self.positions(epoch)[:n])
