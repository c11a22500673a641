"""An ImageFolder tree as torchvision lists it (sorted classes, sorted files): the one scan behind both
``nas data prepare`` (which writes shards from it) and ``data.kind: imagefolder`` (which reads the files as they
are). Kept apart from ``prepare`` so that reading a folder needs neither pyarrow nor tqdm."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset


@dataclass(frozen=True)
class SourceTree:
    """An ImageFolder tree, in torchvision's order (sorted classes, sorted files): position = image id."""

    root: str
    classes: tuple[str, ...]
    samples: tuple[tuple[str, int], ...]  # (absolute path, class index)


def scan_imagefolder(root: str | os.PathLike) -> SourceTree:
    """List an ImageFolder tree; refuse a missing tree, one without class folders, or an empty class folder."""
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: ImageFolder directory not found")
    try:
        classes, class_to_idx = find_classes(root)
    except FileNotFoundError:
        raise ValueError(f"{root}: no class folders (expected ROOT/<class>/<image>)") from None
    samples = make_dataset(root, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    counts = np.bincount([c for _, c in samples], minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        more = f" and {len(empty) - 1} more" if len(empty) > 1 else ""
        raise ValueError(f"{os.path.join(root, empty[0])}: empty class folder{more} "
                         f"(no files ending in {', '.join(IMG_EXTENSIONS)})")
    return SourceTree(root, tuple(classes), tuple(samples))
