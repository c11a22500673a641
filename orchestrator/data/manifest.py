"""The manifest and the index of a prepared shard set.

Layout under the dataset URI::

    manifest.json                 published last: a set without it is incomplete and is never read
    shards-<run>/part-00000.parquet ...   columns id (int64), label (int32), image (encoded bytes), path
    shards-<run>/index.parquet    one row per image: id, label, shard, row_group, row

Image ids are positions in torchvision ``ImageFolder`` order of the source tree (classes sorted, files sorted),
so a seeded split computed on the shards equals the one computed on the folder. Shards hold the images in a
seeded random order so that any row group is a mix of classes. The index lets every Train rank plan its part
of an epoch, and the held-out split, from one small file instead of opening every shard.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from typing import TYPE_CHECKING

import numpy as np

from orchestrator.storage import Location, exists, one_line, read_bytes, storage_error

if TYPE_CHECKING:
    import pyarrow as pa  # noqa: TID253 (annotations only)

FORMAT = "nas-shards/1"
MANIFEST = "manifest.json"
INDEX_COLUMNS = ("id", "label", "shard", "row_group", "row")


# pyarrow is imported where a shard set is read or written: the core (digits, ImageFolder) runs without it.
def index_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([("id", pa.int64()), ("label", pa.int32()), ("shard", pa.int32()),
                      ("row_group", pa.int32()), ("row", pa.int32())])


def shard_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([("id", pa.int64()), ("label", pa.int32()), ("image", pa.binary()), ("path", pa.string())])


@dataclass(frozen=True)
class ShardInfo:
    path: str  # relative to the dataset root
    rows: int
    bytes: int
    row_groups: tuple[int, ...]  # rows in each row group


@dataclass(frozen=True)
class Manifest:
    classes: tuple[str, ...]
    counts: tuple[int, ...]  # images per class, after skipped ones
    shards: tuple[ShardInfo, ...]
    index: str  # relative path of the index file
    skipped: tuple[str, ...] = ()  # corrupt source images left out (paths relative to the source tree)
    provenance: dict = field(default_factory=dict, compare=False)
    format: str = FORMAT

    @property
    def num_samples(self) -> int:
        return sum(self.counts)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> str:
        d = asdict(self)
        d["num_samples"] = self.num_samples
        return json.dumps(d, indent=2)

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        """Parse and check a manifest; ``where`` names it in errors."""
        try:
            d = json.loads(text)
            if d.get("format") != FORMAT:
                raise ValueError(f"format {d.get('format')!r} is not {FORMAT!r}")
            m = cls(classes=tuple(d["classes"]), counts=tuple(int(c) for c in d["counts"]),
                    shards=tuple(ShardInfo(s["path"], int(s["rows"]), int(s["bytes"]), tuple(s["row_groups"]))
                                 for s in d["shards"]),
                    index=d["index"], skipped=tuple(d.get("skipped", ())), provenance=d.get("provenance", {}))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: not a valid shard manifest ({one_line(e)})") from None
        if len(m.classes) != len(m.counts) or not m.classes:
            raise ValueError(f"{where}: {len(m.classes)} class names but {len(m.counts)} class counts")
        if sum(s.rows for s in m.shards) != m.num_samples:
            raise ValueError(f"{where}: shards hold {sum(s.rows for s in m.shards)} rows, counts say {m.num_samples}")
        return m


@dataclass(frozen=True)
class Index:
    """One row per image, sorted by id: where each image lives and its label."""

    id: np.ndarray
    label: np.ndarray
    shard: np.ndarray
    row_group: np.ndarray
    row: np.ndarray

    def __len__(self) -> int:
        return len(self.id)

    def take(self, positions: np.ndarray) -> Index:
        return Index(*(a[positions] for a in (self.id, self.label, self.shard, self.row_group, self.row)))


def load_manifest(loc: Location) -> Manifest:
    """The manifest at ``loc``; a clear error when the set is missing or was never finished."""
    if not exists(loc, MANIFEST):
        raise FileNotFoundError(f"{loc.uri_of(MANIFEST)}: no manifest (not a prepared shard set, or "
                                f"'nas data prepare' did not finish)")
    return Manifest.from_json(read_bytes(loc, MANIFEST).decode("utf-8"), loc.uri_of(MANIFEST))


def load_index(loc: Location, manifest: Manifest) -> Index:
    """Read and check the index: every label in range, every row inside its shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    where = loc.uri_of(manifest.index)
    try:
        with loc.fs.open_input_file(loc.path(manifest.index)) as f:
            t = pq.read_table(f, schema=index_schema())
    except pa.ArrowInvalid as e:
        raise ValueError(f"{where}: not a readable index ({one_line(e)})") from None
    except OSError as e:
        raise storage_error(e, where) from None
    cols = {n: t.column(n).to_numpy() for n in INDEX_COLUMNS}
    order = np.argsort(cols["id"], kind="stable")
    idx = Index(*(cols[n][order] for n in INDEX_COLUMNS))
    check_index(idx, manifest, where)
    return idx


def check_index(idx: Index, m: Manifest, where: str) -> None:
    if len(idx) != m.num_samples:
        raise ValueError(f"{where}: {len(idx)} rows but the manifest counts {m.num_samples} images")
    bad = np.flatnonzero((idx.label < 0) | (idx.label >= m.num_classes))
    if bad.size:
        raise ValueError(f"{where}: image id {idx.id[bad[0]]} has label {idx.label[bad[0]]}, "
                         f"out of range for {m.num_classes} classes")
    if np.unique(idx.id).size != len(idx):
        raise ValueError(f"{where}: duplicate image ids")
    bad = np.flatnonzero((idx.shard < 0) | (idx.shard >= len(m.shards)))
    if bad.size:
        raise ValueError(f"{where}: image id {idx.id[bad[0]]} points at shard {idx.shard[bad[0]]}, "
                         f"but the manifest lists {len(m.shards)}")
