"""Reading a prepared shard set: each Train rank reads only its own row groups, straight from local disk or S3.

A ``ShardRows`` holds the index rows of one split (train, held-out or validation). Per epoch every rank
computes the same seeded order (row groups shuffled, rows shuffled inside each) and takes its contiguous block
of it (see ``partition`` and ``feed``); row groups are fetched with range requests, so no node ever downloads the
whole set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from orchestrator.data.manifest import Index, Manifest
from orchestrator.storage import Location, one_line, resolve, storage_error
from orchestrator.data.transforms import decode as decode_bytes

if TYPE_CHECKING:
    import pyarrow as pa  # noqa: TID253 (annotations only)
    import pyarrow.parquet as pq  # noqa: TID253

# pyarrow is imported where shards are read: the modules import with torch alone, like the rest of the data layer.

@dataclass(frozen=True)
class ShardSet:
    """What a reader needs to find the images: the URI, the endpoint, and the manifest's shard paths."""

    uri: str
    endpoint: str | None
    shards: tuple[str, ...]
    num_classes: int


def check_shards(loc: Location, manifest: Manifest) -> None:
    """Fail early, naming the object, when a shard listed in the manifest is missing or has another size."""
    from pyarrow.fs import FileType

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


class ShardRows:
    """One split of a shard set (its index rows): the read order of an epoch and the loading of given rows.

    Reading is planned by row group: an epoch's order permutes whole row groups and shuffles rows inside each
    (so consecutive samples share a row group and a reader fetches each group with one range request), and
    ``load`` fetches the groups a batch needs, keeping the last few in memory for the next batch. Opened inside
    each DataLoader worker, so no S3 client crosses a fork."""

    def __init__(self, shards: ShardSet, rows: Index, transform: Callable | None = None, decode: bool = True,
                 cache_groups: int = 4) -> None:
        self.shards, self.rows, self.transform, self.decode = shards, rows, transform, decode
        self.labels = rows.label
        self.cache_groups = cache_groups
        self._loc: Location | None = None
        self._footers: dict[int, pq.FileMetaData] = {}
        self._cache: dict[tuple[int, int], pa.Table] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:  # a worker opens its own filesystem and caches
        return {**self.__dict__, "_loc": None, "_footers": {}, "_cache": {}}

    def _keys(self) -> np.ndarray:
        return (self.rows.shard.astype(np.int64) << 32) | self.rows.row_group.astype(np.int64)

    def order(self, rng: np.random.Generator | None) -> np.ndarray:
        """Positions into the rows in read order: storage order, or row groups permuted and rows shuffled in each."""
        r = self.rows
        if rng is None:
            return np.lexsort((r.row, r.row_group, r.shard))
        uniq, unit = np.unique(self._keys(), return_inverse=True)
        unit_rank = rng.permutation(len(uniq))[unit]
        return np.lexsort((rng.random(len(r)), unit_rank))

    def ids(self, positions: np.ndarray) -> np.ndarray:
        return self.rows.id[positions]

    def load(self, positions: np.ndarray) -> list[tuple[Any, int]]:
        """(image, label) of each position, in the given order; the image transformed (or raw bytes)."""
        if self._loc is None:
            self._loc = resolve(self.shards.uri, self.shards.endpoint)
        r = self.rows
        out: list[tuple[Any, int] | None] = [None] * len(positions)
        keys = self._keys()[positions]
        for key in dict.fromkeys(keys.tolist()):  # each row group once, in first-seen order
            where_ = np.flatnonzero(keys == key)
            group = positions[where_]
            shard, row_group = int(r.shard[group[0]]), int(r.row_group[group[0]])
            where = self._loc.uri_of(self.shards.shards[shard])
            table = self._group(shard, row_group)
            rows = r.row[group]
            if rows.max() >= table.num_rows:
                raise ValueError(f"{where}: row group {row_group} has {table.num_rows} rows, "
                                 f"the index wants row {rows.max()}")
            ids = table.column("id").to_numpy()[rows]
            labels = table.column("label").to_numpy()[rows]
            _check_rows(where, ids, labels, r.id[group], r.label[group], self.shards.num_classes)
            images = table.column("image").take(rows).to_pylist()
            for slot, i, label, data in zip(where_.tolist(), ids.tolist(), labels.tolist(), images):
                out[slot] = (self._image(where, i, data), label)
        return out  # type: ignore[return-value]

    def _group(self, shard: int, row_group: int) -> pa.Table:
        key = (shard, row_group)
        if key not in self._cache:
            if len(self._cache) >= self.cache_groups:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = self._read_group(shard, row_group)
        return self._cache[key]

    def _read_group(self, shard: int, row_group: int) -> pa.Table:
        import pyarrow as pa
        import pyarrow.parquet as pq

        loc = self._loc
        rel = self.shards.shards[shard]
        where = loc.uri_of(rel)
        try:
            with loc.fs.open_input_file(loc.path(rel)) as f:
                pf = pq.ParquetFile(f, metadata=self._footers.get(shard))
                self._footers[shard] = pf.metadata
                if row_group >= pf.num_row_groups:
                    raise ValueError(f"{where}: has {pf.num_row_groups} row groups, the index wants {row_group}")
                return pf.read_row_group(row_group, columns=["id", "label", "image"])
        except FileNotFoundError:
            raise FileNotFoundError(f"{where}: shard listed in the manifest is missing") from None
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, KeyError) as e:
            raise ValueError(f"{where}: not a readable shard ({one_line(e)})") from None
        except OSError as e:
            raise storage_error(e, where) from None

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
