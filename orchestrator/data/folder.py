"""An ImageFolder tree as torchvision lists it (sorted classes, sorted files): the one scan behind both
``nas data prepare`` (which writes shards from it) and ``data.kind: imagefolder`` (which reads the files as they
are). Kept apart from ``prepare`` so that reading a folder needs neither pyarrow nor tqdm.

Every file under a class folder is either listed as an image or reported as skipped with the reason (a warning
on the console, whatever the progress settings); none is dropped silently. Images are the files ending in
torchvision's extensions or ``.gif`` (its first frame); an image that then does not decode is handled by the
reader's corrupt-image policy. Class folders must have UTF-8 names (class names are stored in manifests,
results and MLflow): any other is refused, named; a file's name may be any bytes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS

from orchestrator.data.transforms import printable

log = logging.getLogger(__name__)

EXTENSIONS: tuple[str, ...] = (*IMG_EXTENSIONS, ".gif")  # what the readers decode (lower case)
LISTED = 20  # skipped files named one per line; beyond, one line counts the rest


@dataclass(frozen=True)
class SourceTree:
    """An ImageFolder tree, in torchvision's order (sorted classes, sorted files): position = image id."""

    root: str
    classes: tuple[str, ...]
    samples: tuple[tuple[str, int], ...]  # (absolute path, class index)
    skipped: tuple[tuple[str, str], ...] = ()  # (path relative to root, why) of the files not listed as images


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:  # a name that is not UTF-8 is held as surrogates (PEP 383)
        return False


def _classes(root: str) -> list[str]:
    with os.scandir(root) as it:
        classes = sorted(e.name for e in it if e.is_dir())
    if not classes:
        raise ValueError(f"{printable(root)}: no class folders (expected ROOT/<class>/<image>)")
    bad = [c for c in classes if not _utf8(c)]
    if bad:
        raise ValueError(f"{printable(os.path.join(root, bad[0]))}: class folder name is not valid UTF-8; rename it "
                         f"(e.g. convmv -f latin1 -t utf8)")
    return classes


def _why_not(name: str) -> str | None:
    ext = os.path.splitext(name)[1].lower()
    if name.lower().endswith(EXTENSIONS):
        return None
    return f"not an image file (extension {ext!r}; read: {', '.join(EXTENSIONS)})" if ext else \
        "not an image file (no extension)"


def scan_imagefolder(root: str | os.PathLike, report: bool = True) -> SourceTree:
    """List an ImageFolder tree; refuse a missing tree, one without class folders, a class folder whose name is
    not UTF-8, or a class folder without images. Files that are not images are listed in ``skipped`` and, with
    ``report``, each named in a warning with the reason."""
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{printable(root)}: ImageFolder directory not found")
    classes = _classes(root)
    samples: list[tuple[str, int]] = []
    skipped: list[tuple[str, str]] = []
    for index, name in enumerate(classes):  # torchvision's make_dataset, keeping what it leaves out
        for folder, _, files in sorted(os.walk(os.path.join(root, name), followlinks=True)):
            for f in sorted(files):
                path = os.path.join(folder, f)
                why = _why_not(f)
                if why is None:
                    samples.append((path, index))
                else:
                    skipped.append((os.path.relpath(path, root), why))
    counts = np.bincount([c for _, c in samples], minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        more = f" and {len(empty) - 1} more" if len(empty) > 1 else ""
        raise ValueError(f"{printable(os.path.join(root, empty[0]))}: empty class folder{more} "
                         f"(no files ending in {', '.join(EXTENSIONS)})")
    if report:
        report_skipped(root, skipped)
    return SourceTree(root, tuple(classes), tuple(samples), tuple(skipped))


def report_skipped(root: str, skipped: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> None:
    """One warning per skipped file (the first ``LISTED``), then one counting the rest."""
    for rel, why in skipped[:LISTED]:
        log.warning("%s: skipped, %s", printable(os.path.join(root, rel)), why)
    if len(skipped) > LISTED:
        log.warning("%s: %d more files skipped (%d in all) as not image files", printable(root),
                    len(skipped) - LISTED, len(skipped))
