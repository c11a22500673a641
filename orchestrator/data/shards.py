"""Streaming a prepared shard set: each Train rank reads only its own row groups, straight from local disk or S3.

A ``ShardStream`` holds the index rows of one split (train, held-out or validation). Per epoch every rank
computes the same seeded order (row groups shuffled, rows shuffled inside each), takes its contiguous block
of it (see ``partition``) and splits that again among its DataLoader workers. Each row group is fetched once
by one reader with range requests; no node ever downloads the whole set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow.fs import FileType
from torch.utils.data import IterableDataset, get_worker_info

from orchestrator.data.manifest import Index, Manifest
from orchestrator.data.partition import block, check_rank, epoch_rng
from orchestrator.storage import Location, one_line, resolve, storage_error
from orchestrator.data.transforms import decode as decode_bytes

@dataclass(frozen=True)
class ShardSet:
    """What a reader needs to find the images: the URI, the endpoint, and the manifest's shard paths."""

    uri: str
    endpoint: str | None
    shards: tuple[str, ...]
    num_classes: int


def check_shards(loc: Location, manifest: Manifest) -> None:
    """Fail early, naming the object, when a shard listed in the manifest is missing or has another size."""
    paths = [loc.path(s.path) for s in manifest.shards]
    try:
        infos = loc.fs.get_file_info(paths)
    except OSError as e:
        raise storage_error(e, loc.uri) from None
    for s, info in zip(manifest.shards, infos):
        if info.type == FileType.NotFound:
            raise FileNotFoundError(f"{loc.uri_of(s.path)}: shard listed in the manifest is missing")
        if info.size != s.bytes:
            raise OSError(f"{loc.uri_of(s.path)}: shard is {info.size} bytes but the manifest says {s.bytes} "
                          f"(replaced or truncated)")


class ShardStream(IterableDataset):
    """One split of a shard set, as seen by one rank: yields ``(image, label)`` or ``(image, label, id)``.

    With ``decode`` off the image is the encoded ``bytes`` as stored (for benchmarks, and for callers that
    decode elsewhere, e.g. ``torchvision.io.decode_jpeg`` on the GPU). ``len()`` is the number of samples this
    rank yields per epoch."""

    def __init__(self, shards: ShardSet, rows: Index, *, rank: int = 0, world_size: int = 1,
                 transform: Callable | None = None, decode: bool = True, shuffle: bool = False, seed: int = 0,
                 equalize: bool = False, return_ids: bool = False) -> None:
        check_rank(rank, world_size)
        self.shards, self.rows = shards, rows
        self.rank, self.world_size = rank, world_size
        self.transform, self.decode = transform, decode
        self.shuffle, self.seed, self.equalize, self.return_ids = shuffle, seed, equalize, return_ids
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """A new seeded order for the next epoch (call on every rank with the same value)."""
        self.epoch = epoch

    def __len__(self) -> int:
        start, stop = block(len(self.rows), self.rank, self.world_size, self.equalize)
        return stop - start

    def ids(self) -> np.ndarray:
        """The ids this rank yields this epoch, in order (across all its DataLoader workers)."""
        return self.rows.id[self._mine(worker=False)]

    # ---- planning ---------------------------------------------------------------------------------------------
    def _keys(self) -> np.ndarray:
        return (self.rows.shard.astype(np.int64) << 32) | self.rows.row_group.astype(np.int64)

    def _order(self) -> np.ndarray:
        """Positions into ``rows`` in this epoch's read order, the same on every rank."""
        r = self.rows
        if not self.shuffle:
            return np.lexsort((r.row, r.row_group, r.shard))
        rng = epoch_rng(self.seed, self.epoch)
        uniq, unit = np.unique(self._keys(), return_inverse=True)
        unit_rank = rng.permutation(len(uniq))[unit]
        return np.lexsort((rng.random(len(r)), unit_rank))

    def _mine(self, worker: bool = True) -> np.ndarray:
        order = self._order()
        start, stop = block(len(order), self.rank, self.world_size, self.equalize)
        mine = order[start:stop]
        info = get_worker_info() if worker else None
        if info is not None:
            a, b = block(len(mine), info.id, info.num_workers, False)
            mine = mine[a:b]
        return mine

    # ---- reading ----------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple]:
        mine = self._mine()
        if mine.size == 0:
            return
        loc = resolve(self.shards.uri, self.shards.endpoint)  # opened in the worker: no S3 client crosses a fork
        keys = self._keys()[mine]
        cuts = np.flatnonzero(np.diff(keys)) + 1
        footers: dict[int, pq.FileMetaData] = {}  # each shard's footer is fetched once per epoch
        for group in np.split(mine, cuts):
            yield from self._samples(loc, group, footers)

    def _read_group(self, loc: Location, shard: int, row_group: int, footers: dict) -> pa.Table:
        rel = self.shards.shards[shard]
        where = loc.uri_of(rel)
        columns = ["id", "label", "image"]
        try:
            with loc.fs.open_input_file(loc.path(rel)) as f:
                pf = pq.ParquetFile(f, metadata=footers.get(shard))
                footers[shard] = pf.metadata
                if row_group >= pf.num_row_groups:
                    raise ValueError(f"{where}: has {pf.num_row_groups} row groups, the index wants {row_group}")
                return pf.read_row_group(row_group, columns=columns)
        except FileNotFoundError:
            raise FileNotFoundError(f"{where}: shard listed in the manifest is missing") from None
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, KeyError) as e:
            raise ValueError(f"{where}: not a readable shard ({one_line(e)})") from None
        except OSError as e:
            raise storage_error(e, where) from None

    def _samples(self, loc: Location, group: np.ndarray, footers: dict) -> Iterator[tuple]:
        r = self.rows
        shard, row_group = int(r.shard[group[0]]), int(r.row_group[group[0]])
        where = loc.uri_of(self.shards.shards[shard])
        table = self._read_group(loc, shard, row_group, footers)
        rows = r.row[group]
        if rows.max() >= table.num_rows:
            raise ValueError(f"{where}: row group {row_group} has {table.num_rows} rows, "
                             f"the index wants row {rows.max()}")
        ids = table.column("id").to_numpy()[rows]
        labels = table.column("label").to_numpy()[rows]
        _check_rows(where, ids, labels, r.id[group], r.label[group], self.shards.num_classes)
        images = table.column("image").take(pa.array(rows)).to_pylist()
        for i, label, data in zip(ids.tolist(), labels.tolist(), images):
            x = self._image(where, i, data)
            yield (x, label, i) if self.return_ids else (x, label)

    def _image(self, where: str, image_id: int, data: bytes):
        if not self.decode:
            return data
        try:
            img = decode_bytes(data)
        except RuntimeError as e:
            reason = one_line(e).rsplit(", ", 1)[-1]  # drop the decoder's C++ source location
            raise ValueError(f"{where}: image id {image_id} does not decode ({reason})") from None
        return self.transform(img) if self.transform is not None else img


def _check_rows(where: str, ids: np.ndarray, labels: np.ndarray, expected: np.ndarray, expected_labels: np.ndarray,
                num_classes: int) -> None:
    """A shard must agree with the index and the manifest: refuse a label out of range or a replaced shard."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise ValueError(f"{where}: image id {ids[bad[0]]} has label {labels[bad[0]]}, "
                         f"out of range for {num_classes} classes")
    bad = np.flatnonzero(ids != expected)
    if bad.size:
        raise ValueError(f"{where}: holds image id {ids[bad[0]]} where the index expects {expected[bad[0]]} "
                         f"(shard replaced after the manifest was written?)")
    bad = np.flatnonzero(labels != expected_labels)
    if bad.size:
        raise ValueError(f"{where}: image id {ids[bad[0]]} has label {labels[bad[0]]} but the index says "
                         f"{expected_labels[bad[0]]}")
