"""How a restarted worker reads its Ray checkpoint: one file, straight from storage, into memory.

Ray's ``Checkpoint.as_directory()`` downloads a remote checkpoint into a temporary folder that every process of the
node shares, and a process that arrives after an earlier download has finished downloads again into the same files.
A rank still reading them then reads a file being rewritten: in a clean-clone ``make test`` run, the worker group
restarted after a node loss refused its ``search_state.pt`` as corrupt. The first test shows Ray's behaviour (if a
Ray upgrade changes it, this test says so); the second reads through ``checkpoint_file_state``, which
makes no local copy.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.fs as pafs  # noqa: TID253
import pytest
import torch
from ray.train import Checkpoint  # noqa: TID253

from orchestrator.ray_train import checkpoint_file_state
from orchestrator.search.jobs import CHECKPOINT_FILE
from orchestrator.state_io import state_bytes


def _stored_checkpoint(tmp_path: Path) -> Checkpoint:
    """A checkpoint on a filesystem that is not pyarrow's LocalFileSystem, so Ray treats it as remote (as on S3)."""
    d = tmp_path / "store" / "checkpoint_000001"
    d.mkdir(parents=True)
    (d / CHECKPOINT_FILE).write_bytes(state_bytes({"step": torch.tensor(20), "w": torch.arange(1000.0)}))
    return Checkpoint("checkpoint_000001", filesystem=pafs.SubTreeFileSystem(str(tmp_path / "store"),
                                                                             pafs.LocalFileSystem()))


def test_ray_as_directory_rewrites_the_files_a_reader_still_has_open(tmp_path):
    ckpt = _stored_checkpoint(tmp_path)
    with ckpt.as_directory() as first:
        f = Path(first) / CHECKPOINT_FILE
        before = f.stat().st_mtime_ns
        time.sleep(0.05)
        with ckpt.as_directory() as second:  # a second rank of the node, after the first one's download
            assert second == first
            assert f.stat().st_mtime_ns != before  # downloaded again, over the file the first rank reads


def test_checkpoint_file_state_reads_the_stored_file_into_memory(tmp_path):
    state = checkpoint_file_state(_stored_checkpoint(tmp_path), CHECKPOINT_FILE, "checkpoint")
    assert int(state["step"]) == 20 and torch.equal(state["w"], torch.arange(1000.0))
    with pytest.raises(OSError, match="checkpoint checkpoint_000001/other.pt: not found"):
        checkpoint_file_state(_stored_checkpoint(tmp_path / "b"), "other.pt", "checkpoint")
