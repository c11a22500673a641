"""The one data spec (the ``data:`` section of search and retrain configs) and the splits it opens.

Three kinds of data, one spec:

- ``digits``: scikit-learn's bundled handwritten digits, the embedded default (no download);
- ``imagefolder``: a local or NFS ImageFolder tree (``train/<class>/*.JPEG``), read with torchvision;
- ``shards``: a set written by ``nas data prepare`` on a local path or ``s3://``, read by row group.

``open_splits`` checks the data against the task before any compute (the number of classes the net expects,
class names of a separate validation set, a readable manifest) and returns the weight-training split, the
held-out split (architecture steps; ``holdout_per_class`` images of every class taken from the training set, as
ProxylessNAS takes 50 per class from ImageNet's train set) and the validation split. A retrain trains on the
weight-training and held-out splits together. ``Feed`` (``data.feed``) turns a split into one rank's batches:
uint8 images for ``imagefolder`` and ``shards`` (normalised on the device by ``Runtime.batch``), float tensors for
the digits.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from orchestrator.config import check_limits
from orchestrator.data.digits import load_digits_tensors, split_indices
from orchestrator.data.feed import Feed, FolderRows, TensorRows, concat_rows
from orchestrator.data.folder import scan_imagefolder
from orchestrator.data.manifest import load_index, load_manifest
from orchestrator.data.shards import ShardRows, ShardSet, check_shards
from orchestrator.data.transforms import COLOR_JITTER, eval_transform, train_transform
from orchestrator.storage import resolve

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("digits", "imagefolder", "shards")
Role = Literal["search", "retrain"]
DEFAULT_JITTER = {"search": "normal", "retrain": "strong"}  # the official search and retrain defaults


@dataclass(frozen=True)
class DataSpec:
    """The ``data:`` section, the same in search and retrain configs."""

    kind: str = "digits"  # digits | imagefolder | shards
    uri: str | None = None  # the ImageFolder root, or the shard set's folder / s3:// prefix
    valid_uri: str | None = None  # a separate validation set of the same kind (ImageNet's val); else carved out
    holdout_per_class: int = 20  # images per class for architecture steps (official ImageNet search: 50)
    valid_fraction: float = 0.2  # per class, taken from the training set when there is no valid_uri
    seed: int = 0  # the split and every epoch's order; the same on every rank
    # DataLoader processes per rank that decode and augment ahead of the step. At most 64: each is a whole Python
    # process with torch loaded (a few hundred MB) holding ``prefetch`` batches. The bound is absolute, not this
    # host's CPU count, because the config is checked on the driver while the loaders run on the cluster's nodes;
    # 64 is well above the cores a rank gets on GPU nodes (24 vCPUs per GPU on an 8-GPU p5.48xlarge), so a larger
    # value is a typo that would fork the node out of memory.
    workers: int = field(default=0, metadata={"max": 64})
    # batches each loader process prepares ahead; at most 64 (workers x prefetch batches wait in memory)
    prefetch: int = field(default=2, metadata={"max": 64})
    color_jitter: str | None = None  # none | normal | strong; default normal in a search, strong in a retrain
    endpoint: str | None = None  # S3-compatible endpoint; default AWS_ENDPOINT_URL(_S3)
    mp_context: str | None = None  # how loader processes start: None (fork on Linux) or spawn | forkserver

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind: must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind != "digits" and not self.uri:
            raise ValueError(f"uri: data kind {self.kind!r} needs the location of its data")
        if self.kind == "digits" and (self.uri or self.valid_uri):
            raise ValueError("uri: data kind 'digits' is embedded and takes no uri or valid_uri")
        if self.kind == "imagefolder":
            for key, u in (("uri", self.uri), ("valid_uri", self.valid_uri)):
                if u and "://" in u and not u.startswith("file://"):
                    raise ValueError(f"{key}: {u}: the imagefolder kind reads a local or NFS path; for object "
                                     f"storage prepare shards with 'nas data prepare' and use kind 'shards'")
        if self.holdout_per_class < 1:
            raise ValueError(f"holdout_per_class: must be at least 1, got {self.holdout_per_class}")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction: must be in [0, 1), got {self.valid_fraction}")
        if self.valid_uri is None and self.valid_fraction == 0.0:
            raise ValueError("valid_fraction: no validation data: give valid_uri or a valid_fraction above 0")
        if self.workers < 0:
            raise ValueError(f"workers: must be at least 0, got {self.workers}")
        if self.prefetch < 1:
            raise ValueError(f"prefetch: must be at least 1, got {self.prefetch}")
        if self.color_jitter is not None and self.color_jitter not in COLOR_JITTER:
            raise ValueError(f"color_jitter: must be one of {', '.join(COLOR_JITTER)}, got {self.color_jitter!r}")
        if self.mp_context not in (None, "fork", "spawn", "forkserver"):
            raise ValueError(f"mp_context: must be fork, spawn or forkserver, got {self.mp_context!r}")
        check_limits(self)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def train_valid_fraction(self) -> float:
        """The share of the training set kept for validation: none when there is a separate valid set."""
        return 0.0 if self.valid_uri else self.valid_fraction

    def jitter(self, role: Role) -> str:
        return self.color_jitter or DEFAULT_JITTER[role]

    def feed(self, rows: Any, *, batch_size: int, rank: int = 0, world: int = 1, shuffle: bool = True,
             stream: str = "train", pin_memory: bool = False) -> Feed:
        """A ``Feed`` of one split with this spec's loader settings."""
        return Feed(rows, batch_size=batch_size, rank=rank, world=world, shuffle=shuffle, seed=self.seed,
                    stream=stream, workers=self.workers if self.kind != "digits" else 0, prefetch=self.prefetch,
                    pin_memory=pin_memory, mp_context=self.mp_context)


@dataclass(frozen=True)
class Splits:
    """The three splits of a task, opened and checked; every rank opens the same."""

    train: Any  # weight steps (a retrain: weight and held-out images together)
    holdout: Any  # architecture steps, disjoint from train (a retrain: empty)
    valid: Any  # reporting; every image read once across ranks
    classes: tuple[str, ...]
    where: str  # what the data is, for messages and records

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _check_classes(found: int, expected: int | None, where: str, what: str) -> None:
    if expected is not None and found != expected:
        raise ValueError(f"data: {where} has {found} classes, but {what} expects {expected}")


def split_positions(labels: np.ndarray, spec: DataSpec, role: Role = "search") -> tuple[list[int], list[int],
                                                                                         list[int]]:
    """(weight-training, held-out, validation) positions: the search's seeded per-class split. A retrain with a
    separate validation set trains on every image; without one it keeps the search's validation split."""
    if role == "retrain" and spec.valid_uri:
        return list(range(len(labels))), [], []
    return split_indices(labels, spec.holdout_per_class, spec.train_valid_fraction, spec.seed)


def _open_shards(uri: str, spec: DataSpec):

    loc = resolve(uri, spec.endpoint)
    manifest = load_manifest(loc)
    check_shards(loc, manifest)
    index = load_index(loc, manifest)
    return manifest, index, ShardSet(loc.uri, spec.endpoint, tuple(s.path for s in manifest.shards),
                                     manifest.num_classes)


def open_splits(spec: DataSpec, resolution: int, num_classes: int | None = None, role: Role = "search",
                what: str = "the net") -> Splits:
    """The splits of ``spec`` for a net that reads ``resolution`` px and predicts ``num_classes`` classes;
    ``ValueError`` (one line) when the data does not fit the net, before any image is decoded."""
    train_tf = train_transform(resolution, spec.jitter(role))
    eval_tf = eval_transform(resolution)
    if spec.kind == "digits":
        _check_classes(10, num_classes, "digits", what)
        x, y = load_digits_tensors(resolution)
        tr, ho, va = split_positions(y.numpy(), spec, role)
        part = lambda idx: TensorRows(x[idx], y[idx], idx)  # noqa: E731
        train, holdout, valid = part(tr), part(ho), part(va)
        classes, where = tuple(str(i) for i in range(10)), "digits"
    elif spec.kind == "imagefolder":
        tree = scan_imagefolder(spec.uri.removeprefix("file://"))
        _check_classes(len(tree.classes), num_classes, tree.root, what)
        tr, ho, va = split_positions(np.array([c for _, c in tree.samples]), spec, role)
        train, holdout = FolderRows(tree.samples, tr, train_tf), FolderRows(tree.samples, ho, eval_tf)
        valid = FolderRows(tree.samples, va, eval_tf)
        if spec.valid_uri:
            vtree = scan_imagefolder(spec.valid_uri.removeprefix("file://"))
            if vtree.classes != tree.classes:
                raise ValueError(f"data: {vtree.root}: class folders differ from those of {tree.root}")
            valid = FolderRows(vtree.samples, range(len(vtree.samples)), eval_tf)
        classes, where = tuple(tree.classes), tree.root
    else:
        manifest, index, sset = _open_shards(spec.uri, spec)
        _check_classes(manifest.num_classes, num_classes, spec.uri, what)
        tr, ho, va = split_positions(index.label, spec, role)
        train = ShardRows(sset, index.take(np.asarray(tr, dtype=np.int64)), train_tf)
        holdout = ShardRows(sset, index.take(np.asarray(ho, dtype=np.int64)), eval_tf)
        valid = ShardRows(sset, index.take(np.asarray(va, dtype=np.int64)), eval_tf)
        if spec.valid_uri:
            vman, vindex, vset = _open_shards(spec.valid_uri, spec)
            if vman.classes != manifest.classes:
                raise ValueError(f"data: {spec.valid_uri}: class names differ from those of {spec.uri}")
            valid = ShardRows(vset, vindex, eval_tf)
        classes, where = tuple(manifest.classes), spec.uri
    if role == "retrain":
        holdout = _with_transform(holdout, train_tf)
        train, holdout = concat_rows(train, holdout), _empty(holdout)
    log.info("%s data %s: %d train, %d held-out, %d valid images, %d classes", spec.kind, where, len(train),
             len(holdout), len(valid), len(classes))
    return Splits(train, holdout, valid, classes, where)


def _with_transform(rows: Any, tf: Any) -> Any:
    if hasattr(rows, "transform"):
        rows.transform = tf
    return rows


def _empty(rows: Any) -> Any:
    if isinstance(rows, TensorRows):
        return TensorRows(rows.x[:0], rows.y[:0], [])
    if isinstance(rows, FolderRows):
        return FolderRows(rows.samples, [], rows.transform)
    return ShardRows(rows.shards, rows.rows.take(np.arange(0)), rows.transform, rows.decode)
