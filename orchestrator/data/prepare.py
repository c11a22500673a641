"""``nas data prepare``: turn an ImageFolder tree into Parquet shards (encoded image bytes + label) plus a manifest.

Every image is decoded once on the way in, with the decoder the readers use, so a corrupt file is found here
(and skipped and counted, or refused) rather than in the middle of a cluster run. Shards go under a fresh
``shards-<run>/`` prefix and the manifest is published last, so readers never see a half-written set and an
older set stays readable until the new manifest replaces it; on failure everything this run wrote is removed.
"""

from __future__ import annotations

import getpass
import io
import logging
import os
import platform
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torchvision
from PIL import Image
from pyarrow.fs import FileType
from tqdm import tqdm

from orchestrator.data.folder import SourceTree, scan_imagefolder
from orchestrator.data.manifest import MANIFEST, Manifest, ShardInfo, index_schema, load_manifest, shard_schema
from orchestrator.durable import fsync_dir, fsync_file
from orchestrator.storage import (Location, exists, one_line, publish_bytes, remove_quietly, resolve,
                                       storage_error, write_bytes)
from orchestrator.data.transforms import decode, printable, to_rgb

log = logging.getLogger(__name__)

OnCorrupt = Literal["skip", "fail"]
MARKER = "_INCOMPLETE"  # sits in a run's prefix until it is published, for whoever lists the bucket meanwhile


@dataclass(frozen=True)
class PrepareOptions:
    shard_size: int = 1000  # images per shard file
    row_group_size: int = 128  # images per row group: the unit a reader fetches (~14 MB of ImageNet JPEGs)
    on_corrupt: OnCorrupt = "fail"
    seed: int = 0  # the shuffle of images across shards
    overwrite: bool = False
    workers: int = 4  # threads reading and verifying images
    endpoint: str | None = None
    progress: bool | None = None  # None: a bar when stderr is a terminal

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ValueError(f"shard size must be at least 1 image, got {self.shard_size}")
        if self.row_group_size < 1:
            raise ValueError(f"row group size must be at least 1 image, got {self.row_group_size}")
        if self.on_corrupt not in ("skip", "fail"):
            raise ValueError(f"on_corrupt must be 'skip' or 'fail', got {self.on_corrupt!r}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")


@dataclass(frozen=True)
class _Image:
    id: int
    label: int
    path: str  # relative to the source root
    data: bytes | None  # None when corrupt
    error: str | None = None


def _reason(e: BaseException) -> str:
    """torchvision's decoder messages start with a C++ source location; keep the human part."""
    return one_line(e).rsplit(", ", 1)[-1]


def load_image(path: str) -> tuple[bytes, str | None]:
    """The bytes to store and None, or the bytes and why they cannot be used (an unreadable or empty file, a
    decompression bomb, data that does not decode).

    Formats the torchvision decoder cannot read (BMP, TIFF, ...) but PIL can are re-encoded as 8-bit RGB PNG."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return b"", f"cannot read the file ({one_line(e)})"
    if not data:
        return data, "empty file"
    try:  # the header only: a decompression bomb is refused before any decoder allocates its pixels
        with Image.open(io.BytesIO(data)):
            pass
    except Image.DecompressionBombError as e:
        return data, f"decompression bomb ({one_line(e)})"
    except Exception:  # noqa: BLE001  a format PIL does not know: torchvision's decoder may still read it
        pass
    try:
        decode(data)  # what the shard readers run: 16-bit and animated images come out as 8-bit RGB
        return data, None
    except (RuntimeError, ValueError) as e:
        reason = _reason(e)
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            out = io.BytesIO()
            to_rgb(im).save(out, format="PNG")
            return out.getvalue(), None
    except Exception:  # noqa: BLE001  PIL's decoders raise OSError, SyntaxError, ValueError, EOFError, ...
        return data, reason


def _read_chunk(tree: SourceTree, ids: np.ndarray, pool: ThreadPoolExecutor) -> list[_Image]:
    def one(i: int) -> _Image:
        path, label = tree.samples[i]
        data, err = load_image(path)
        return _Image(int(i), label, printable(os.path.relpath(path, tree.root)), None if err else data, err)

    return list(pool.map(one, ids.tolist()))


def _write_shard(loc: Location, rel: str, images: list[_Image], row_group_size: int) -> ShardInfo:
    table = pa.table({"id": [im.id for im in images], "label": [im.label for im in images],
                      "image": [im.data for im in images], "path": [im.path for im in images]},
                     schema=shard_schema())
    try:
        with loc.fs.open_output_stream(loc.path(rel)) as f:
            pq.write_table(table, f, row_group_size=row_group_size, compression="none")
        size = loc.fs.get_file_info(loc.path(rel)).size
    except OSError as e:
        raise storage_error(e, loc.uri_of(rel)) from None
    groups = tuple(min(row_group_size, len(images) - s) for s in range(0, len(images), row_group_size))
    return ShardInfo(rel, len(images), int(size), groups)


def _chunks(n: int, size: int, seed: int) -> Iterator[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    for s in range(0, n, size):
        yield order[s : s + size]


def _provenance(tree: SourceTree, opts: PrepareOptions, run: str) -> dict:
    return {"source": printable(tree.root), "created_by": "nas data prepare", "run": run,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": socket.gethostname(), "user": getpass.getuser(), "python": platform.python_version(),
            "pyarrow": pa.__version__, "torchvision": torchvision.__version__,
            "shard_size": opts.shard_size, "row_group_size": opts.row_group_size, "seed": opts.seed,
            "on_corrupt": opts.on_corrupt,
            # files in class folders that are not images (reported when scanned): path -> why
            "not_images": {printable(rel): why for rel, why in tree.skipped}}


def _write_all(tree: SourceTree, loc: Location, run_dir: str, opts: PrepareOptions) -> tuple[list, list, list]:
    """Write every shard; returns (shard infos, index rows, skipped paths)."""
    shards: list[ShardInfo] = []
    index: list[tuple[int, int, int, int, int]] = []
    skipped: list[str] = []
    bar = tqdm(total=len(tree.samples), unit="img", desc="prepare", disable=_bar_disabled(opts.progress))
    with bar, ThreadPoolExecutor(opts.workers) as pool:
        for ids in _chunks(len(tree.samples), opts.shard_size, opts.seed):
            images = _read_chunk(tree, ids, pool)
            bad = [im for im in images if im.data is None]
            if bad and opts.on_corrupt == "fail":
                raise ValueError(f"{os.path.join(printable(tree.root), bad[0].path)}: corrupt image ({bad[0].error}); "
                                 f"pass --on-corrupt skip to leave such files out")
            for im in bad:
                log.warning("skipping corrupt image %s (%s)", im.path, im.error)
            skipped += [im.path for im in bad]
            good = [im for im in images if im.data is not None]
            if good:
                info = _write_shard(loc, f"{run_dir}/part-{len(shards):05d}.parquet", good, opts.row_group_size)
                index += [(im.id, im.label, len(shards), r // opts.row_group_size, r % opts.row_group_size)
                          for r, im in enumerate(good)]
                shards.append(info)
            bar.update(len(images))
            bar.set_postfix(shards=len(shards), skipped=len(skipped))
    return shards, index, skipped


def _bar_disabled(progress: bool | None) -> bool | None:
    return None if progress is None else not progress  # tqdm: None = off unless a terminal


def _write_index(loc: Location, rel: str, rows: list[tuple[int, int, int, int, int]]) -> None:
    schema = index_schema()
    cols = list(zip(*rows)) if rows else [[]] * len(schema)
    table = pa.table(dict(zip(schema.names, cols)), schema=schema)
    try:
        with loc.fs.open_output_stream(loc.path(rel)) as f:
            pq.write_table(table, f)
    except OSError as e:
        raise storage_error(e, loc.uri_of(rel)) from None


def _root_exists(loc: Location) -> bool:
    """Whether the output folder (or any key under the S3 prefix) exists before this run."""
    try:
        return loc.fs.get_file_info(loc.root).type != FileType.NotFound
    except OSError as e:
        raise storage_error(e, loc.uri) from None


def prepare_shards(imagefolder: str | os.PathLike, out: str, opts: PrepareOptions = PrepareOptions()) -> Manifest:
    """Convert an ImageFolder tree into shards at ``out`` (a folder or ``s3://`` prefix) and publish a manifest."""
    tree = scan_imagefolder(imagefolder)
    loc = resolve(out, opts.endpoint)
    existed = _root_exists(loc)
    old = None
    if exists(loc, MANIFEST):
        if not opts.overwrite:
            raise ValueError(f"{loc.uri_of(MANIFEST)} already exists; pass --overwrite to replace that shard set")
        old = load_manifest(loc)
    run = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    run_dir = f"shards-{run}"
    try:
        write_bytes(loc, f"{run_dir}/{MARKER}", b"'nas data prepare' is writing; removed when published\n")
        shards, index, skipped = _write_all(tree, loc, run_dir, opts)
        if not shards:
            raise ValueError(f"{tree.root}: every image is corrupt, nothing to write")
        _write_index(loc, f"{run_dir}/index.parquet", index)
        _sync(loc, [s.path for s in shards] + [f"{run_dir}/index.parquet"], run_dir)
        counts = np.bincount([r[1] for r in index], minlength=len(tree.classes))
        manifest = Manifest(classes=tree.classes, counts=tuple(int(c) for c in counts), shards=tuple(shards),
                            index=f"{run_dir}/index.parquet", skipped=tuple(skipped),
                            provenance=_provenance(tree, opts, run))
        publish_bytes(loc, MANIFEST, manifest.to_json().encode("utf-8"))
    except BaseException:
        remove_quietly(loc, run_dir, is_dir=True)
        if not existed and "/" in loc.root.strip("/"):
            remove_quietly(loc, "", is_dir=True)  # the output did not exist before: leave none behind
        raise
    remove_quietly(loc, f"{run_dir}/{MARKER}")
    _drop_old(loc, old, run_dir)
    log.info("wrote %d images of %d classes in %d shards to %s (%d corrupt skipped)", manifest.num_samples,
             manifest.num_classes, len(shards), loc.uri, len(skipped))
    return manifest


def _sync(loc: Location, files: list[str], run_dir: str) -> None:
    """On a local filesystem, put the shards and the index on disk before the manifest that lists them is published
    (``publish_bytes`` makes the manifest itself durable); an S3 object is durable once written."""
    if loc.is_s3:
        return
    try:
        for rel in files:
            fsync_file(loc.path(rel))
        fsync_dir(loc.path(run_dir))
    except OSError as e:
        raise storage_error(e, loc.uri_of(run_dir)) from None


def _drop_old(loc: Location, old: Manifest | None, run_dir: str) -> None:
    """After an overwrite, remove the replaced set's shards (only its own prefix)."""
    if old is None:
        return
    old_dir = old.index.split("/")[0]
    if old_dir.startswith("shards-") and old_dir != run_dir:
        remove_quietly(loc, old_dir, is_dir=True)
        log.info("removed the replaced shard set %s", loc.uri_of(old_dir))
