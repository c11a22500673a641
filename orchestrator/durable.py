"""Durable local writes: a file written through a temporary name is on disk before it takes its final name, and
the rename is on disk before the writer reports success.

``os.replace`` alone is atomic but not durable: after a power loss or kernel crash the new name can point at an
empty or partial file (its data still in the page cache when the rename reached the journal), or the rename can be
lost. So the temporary file is fsync'ed before the rename and its folder after it. Standard library only, so that
``storage`` imports it without torch. Object stores need none of this: an S3 PUT is atomic and durable when it
returns.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

# fsync of a folder is refused by some filesystems (and by Windows); the rename is then as durable as they make it
_DIR_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EISDIR, errno.EACCES,
                          errno.EPERM}


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file's data and metadata to disk (an I/O error surfaces here, as an ``OSError``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk, where the filesystem allows it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as e:
        if e.errno in _DIR_FSYNC_UNSUPPORTED:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def durable_replace(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give the written file ``tmp`` the name ``path`` (same folder) atomically and durably: fsync the file, rename,
    fsync the folder."""
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)
