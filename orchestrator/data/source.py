"""The one entry the search and retrain code call: a ``DataConfig`` in, three DataLoaders for one rank out.

``make_loaders(cfg, rank, world_size)`` returns the weight-training loader, the held-out loader (architecture
steps; ``holdout_per_class`` images of every class taken from the training set with ``seed``, disjoint from
the weight-training split, as ProxylessNAS takes 50 per class from ImageNet's train set) and the validation
loader. Each rank gets its own share of every split (see ``partition``); call ``set_epoch`` on every rank at
the start of each epoch. Three kinds of data:

- ``digits``: scikit-learn's bundled handwritten digits, the embedded default (no download);
- ``imagefolder``: a local or NFS ImageFolder tree, read with torchvision;
- ``shards``: a set written by ``nas data prepare`` on a local path or ``s3://``, streamed by row group.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Literal, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.datasets.folder import default_loader

from orchestrator.data.digits import digits_splits, split_indices
from orchestrator.data.manifest import load_index, load_manifest
from orchestrator.data.partition import RankSampler, check_rank
from orchestrator.data.prepare import SourceTree, scan_imagefolder
from orchestrator.data.shards import ShardSet, ShardStream, check_shards
from orchestrator.storage import resolve
from orchestrator.data.transforms import eval_transform, train_transform

log = logging.getLogger(__name__)

Kind = Literal["digits", "imagefolder", "shards"]
KINDS: tuple[str, ...] = ("digits", "imagefolder", "shards")


@dataclass(frozen=True)
class DataConfig:
    kind: Kind = "digits"
    uri: str | None = None  # the ImageFolder root, or the shard set's folder / s3:// prefix
    valid_uri: str | None = None  # a separate validation set of the same kind (ImageNet's val); else carved out
    resolution: int = 32
    holdout_per_class: int = 50  # images per class for architecture steps (ProxylessNAS: 50)
    valid_fraction: float = 0.2  # per class, taken from the training set when there is no valid_uri
    seed: int = 0  # the split and the per-epoch shuffles; the same on every rank
    batch_size: int = 64  # per rank
    eval_batch_size: int | None = None  # per rank, held-out and validation; default batch_size
    num_workers: int = 0  # DataLoader processes per rank
    mp_context: str | None = None  # how they start: None (the platform's default, fork on Linux) or "spawn"
    endpoint: str | None = None  # S3-compatible endpoint; default AWS_ENDPOINT_URL(_S3)
    num_classes: int | None = None  # what the search space expects; checked against the data
    equalize: bool = True  # same number of train / held-out samples on every rank (needed by all-reduce)
    return_ids: bool = False  # batches carry sample ids as a third element (tests, audits)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"data kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind != "digits" and not self.uri:
            raise ValueError(f"data kind {self.kind!r} needs a uri")
        if self.kind == "digits" and (self.uri or self.valid_uri):
            raise ValueError("data kind 'digits' is embedded and takes no uri or valid_uri")
        for name in ("resolution", "holdout_per_class", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be at least 1, got {self.eval_batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be at least 0, got {self.num_workers}")
        if self.mp_context not in (None, "fork", "spawn", "forkserver"):
            raise ValueError(f"mp_context must be fork, spawn or forkserver, got {self.mp_context!r}")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")
        if self.valid_uri is None and self.valid_fraction == 0.0:
            raise ValueError("no validation data: give valid_uri or a valid_fraction above 0")

    @property
    def train_valid_fraction(self) -> float:
        """The share of the training set kept for validation: none when there is a separate valid set."""
        return 0.0 if self.valid_uri else self.valid_fraction


class Loaders(NamedTuple):
    train: DataLoader  # weight steps: shuffled, random-resized crops, full batches
    holdout: DataLoader  # architecture steps: shuffled, centre crops
    valid: DataLoader  # reporting: in order, centre crops, every image exactly once across ranks


@dataclass(frozen=True)
class _Parts:
    """Map-style datasets of the three splits (digits, ImageFolder)."""

    train: Dataset
    holdout: Dataset
    valid: Dataset


class FolderImages(Dataset):
    """Some images of an ImageFolder tree by position, loaded with torchvision's loader and one transform."""

    def __init__(self, samples: Sequence[tuple[str, int]], positions: Sequence[int], transform: Callable,
                 return_ids: bool = False) -> None:
        self.samples, self.positions = samples, np.asarray(positions, dtype=np.int64)
        self.transform, self.return_ids = transform, return_ids

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int):
        pos = int(self.positions[i])
        path, label = self.samples[pos]
        try:
            img = default_loader(path)
        except OSError as e:
            raise OSError(f"{path}: cannot read image ({e})") from None
        x = self.transform(img)
        return (x, label, pos) if self.return_ids else (x, label)


def _check_classes(found: int, cfg: DataConfig, where: str) -> None:
    if cfg.num_classes is not None and found != cfg.num_classes:
        raise ValueError(f"{where}: {found} classes, but the search space expects {cfg.num_classes}")


def _digits_parts(cfg: DataConfig) -> _Parts:
    s = digits_splits(cfg.resolution, cfg.seed, cfg.holdout_per_class, cfg.valid_fraction)
    _check_classes(10, cfg, "digits")

    def with_ids(part: TensorDataset, index: tuple[int, ...]) -> TensorDataset:
        return TensorDataset(*part.tensors, torch.tensor(index)) if cfg.return_ids else part

    return _Parts(with_ids(s.train, s.train_index), with_ids(s.holdout, s.holdout_index),
                  with_ids(s.valid, s.valid_index))


def _folder_tree(uri: str) -> SourceTree:
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"{uri}: the imagefolder kind reads a local or NFS path; for object storage prepare "
                         f"shards with 'nas data prepare' and use kind 'shards'")
    return scan_imagefolder(uri.removeprefix("file://"))


def folder_parts(cfg: DataConfig) -> _Parts:
    tree = _folder_tree(cfg.uri)
    _check_classes(len(tree.classes), cfg, tree.root)
    labels = np.array([c for _, c in tree.samples])
    tr, ho, va = split_indices(labels, cfg.holdout_per_class, cfg.train_valid_fraction, cfg.seed)
    train_tf, eval_tf = train_transform(cfg.resolution), eval_transform(cfg.resolution)
    valid = FolderImages(tree.samples, va, eval_tf, cfg.return_ids)
    if cfg.valid_uri:
        vtree = _folder_tree(cfg.valid_uri)
        if vtree.classes != tree.classes:
            raise ValueError(f"{vtree.root}: class folders differ from those of {tree.root}")
        valid = FolderImages(vtree.samples, range(len(vtree.samples)), eval_tf, cfg.return_ids)
    return _Parts(FolderImages(tree.samples, tr, train_tf, cfg.return_ids),
                  FolderImages(tree.samples, ho, eval_tf, cfg.return_ids), valid)


def _open_shards(uri: str, cfg: DataConfig):
    loc = resolve(uri, cfg.endpoint)
    manifest = load_manifest(loc)
    check_shards(loc, manifest)
    index = load_index(loc, manifest)
    sset = ShardSet(loc.uri, cfg.endpoint, tuple(s.path for s in manifest.shards), manifest.num_classes)
    return manifest, index, sset


def _shard_streams(cfg: DataConfig, rank: int, world_size: int) -> tuple[ShardStream, ShardStream, ShardStream]:
    manifest, index, sset = _open_shards(cfg.uri, cfg)
    _check_classes(manifest.num_classes, cfg, cfg.uri)
    tr, ho, va = split_indices(index.label, cfg.holdout_per_class, cfg.train_valid_fraction, cfg.seed)
    train_tf, eval_tf = train_transform(cfg.resolution), eval_transform(cfg.resolution)
    common = dict(rank=rank, world_size=world_size, seed=cfg.seed, return_ids=cfg.return_ids)
    train = ShardStream(sset, index.take(np.asarray(tr)), transform=train_tf, shuffle=True,
                        equalize=cfg.equalize, **common)
    holdout = ShardStream(sset, index.take(np.asarray(ho)), transform=eval_tf, shuffle=True,
                          equalize=cfg.equalize, **common)
    if cfg.valid_uri:
        vman, vindex, vset = _open_shards(cfg.valid_uri, cfg)
        if vman.classes != manifest.classes:
            raise ValueError(f"{cfg.valid_uri}: class names differ from those of {cfg.uri}")
        valid = ShardStream(vset, vindex, transform=eval_tf, **common)
    else:
        valid = ShardStream(sset, index.take(np.asarray(va)), transform=eval_tf, **common)
    return train, holdout, valid


def _loader(ds: Dataset, cfg: DataConfig, batch_size: int, *, sampler: RankSampler | None = None,
            drop_last: bool = False) -> DataLoader:
    """Workers are not persistent: each epoch they get the dataset with its new ``set_epoch``. Shard readers
    open their S3 client inside the worker, so forked workers hold no client of the parent's (checked with
    pyarrow 25); ``mp_context="spawn"`` is the way out should a platform's S3 client not survive fork."""
    ctx = cfg.mp_context if cfg.num_workers > 0 else None
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=cfg.num_workers,
                      drop_last=drop_last, multiprocessing_context=ctx, persistent_workers=False)


def make_loaders(cfg: DataConfig, rank: int = 0, world_size: int = 1) -> Loaders:
    """The (train, holdout, valid) DataLoaders of ``rank`` among ``world_size`` Train workers."""
    check_rank(rank, world_size)
    eval_bs = cfg.eval_batch_size or cfg.batch_size
    if cfg.kind == "shards":
        train, holdout, valid = _shard_streams(cfg, rank, world_size)
        loaders = Loaders(_loader(train, cfg, cfg.batch_size, drop_last=True), _loader(holdout, cfg, eval_bs),
                          _loader(valid, cfg, eval_bs))
        sizes = (len(train), len(holdout), len(valid))
    else:
        parts = _digits_parts(cfg) if cfg.kind == "digits" else folder_parts(cfg)
        samplers = (RankSampler(len(parts.train), rank, world_size, True, cfg.seed, cfg.equalize),
                    RankSampler(len(parts.holdout), rank, world_size, True, cfg.seed, cfg.equalize),
                    RankSampler(len(parts.valid), rank, world_size, False, cfg.seed, False))
        loaders = Loaders(_loader(parts.train, cfg, cfg.batch_size, sampler=samplers[0], drop_last=True),
                          _loader(parts.holdout, cfg, eval_bs, sampler=samplers[1]),
                          _loader(parts.valid, cfg, eval_bs, sampler=samplers[2]))
        sizes = tuple(len(s) for s in samplers)
    if sizes[0] < cfg.batch_size:
        raise ValueError(f"rank {rank} of {world_size} gets {sizes[0]} training images, fewer than one batch "
                         f"of {cfg.batch_size}: lower batch_size or use fewer workers")
    log.info("%s data, rank %d/%d: %d train, %d held-out, %d valid images", cfg.kind, rank, world_size, *sizes)
    return loaders


def set_epoch(loaders: Loaders | Sequence[DataLoader], epoch: int) -> None:
    """Start epoch ``epoch`` on every loader (new seeded shuffle, the same on all ranks)."""
    for loader in loaders:
        target = loader.sampler if isinstance(loader.sampler, RankSampler) else loader.dataset
        if hasattr(target, "set_epoch"):
            target.set_epoch(epoch)
