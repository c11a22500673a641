"""Issue 22: local writes are durable, not only atomic. Each file written through a temporary name is fsync'ed
before the rename and its folder after it, as the kernel sees it (``strace`` of a real write)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_data import make_tree

STRACE = shutil.which("strace")
pytestmark = pytest.mark.skipif(STRACE is None, reason="needs strace to see the system calls")

_FSYNC = re.compile(r'fsync\(\d+<(?P<path>[^>]*)>\)\s*=\s*0')
_RENAME = re.compile(r'rename(?:at2?)?\((?:[^,]*, )?"(?P<src>[^"]*)", (?:[^,]*, )?"(?P<dst>[^"]*)"')


def syscalls(code: str, tmp: Path) -> list[tuple[str, str, str]]:
    """The fsync and rename calls of ``code`` run in a fresh interpreter: ('fsync', path, '') or
    ('rename', src, dst), in order."""
    log = tmp / "strace.log"
    proc = subprocess.run([STRACE, "-f", "-y", "-o", str(log), "-e", "trace=fsync,rename,renameat,renameat2",
                           sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0 and "ptrace" in proc.stderr:
        pytest.skip(f"strace cannot trace here: {proc.stderr.strip().splitlines()[0]}")
    assert proc.returncode == 0, proc.stderr
    calls = []
    for line in log.read_text().splitlines():
        if (m := _FSYNC.search(line)) is not None:
            calls.append(("fsync", m["path"], ""))
        elif (m := _RENAME.search(line)) is not None and "= 0" in line:
            calls.append(("rename", m["src"], m["dst"]))
    return calls


def assert_durable(calls: list[tuple[str, str, str]], final: Path) -> None:
    """The rename onto ``final`` is preceded by an fsync of the file renamed and followed by one of its folder."""
    at = [i for i, c in enumerate(calls) if c[0] == "rename" and Path(c[2]) == final]
    assert at, f"no rename onto {final}: {calls}"
    i = at[-1]
    src = Path(calls[i][1])
    assert ("fsync", str(src), "") in calls[:i], f"{src} not fsync'ed before its rename: {calls}"
    assert ("fsync", str(final.parent), "") in calls[i + 1:], f"{final.parent} not fsync'ed after: {calls}"


def test_export_and_checkpoint_writes_are_fsynced(tmp_path):
    net_config, ckpt = tmp_path / "out" / "net.config.json", tmp_path / "out" / "checkpoint.pt"
    calls = syscalls(
        "from orchestrator.export import atomic_write_bytes\n"
        "from orchestrator.state_io import save_state\n"
        f"atomic_write_bytes({str(net_config)!r}, b'{{}}')\n"
        f"save_state({{'step': 1}}, {str(ckpt)!r})\n", tmp_path)
    assert_durable(calls, net_config)
    assert_durable(calls, ckpt)
    assert net_config.read_bytes() == b"{}"


def test_local_publish_is_fsynced(tmp_path):
    target = tmp_path / "set" / "manifest.json"
    calls = syscalls(
        "from orchestrator.storage import publish_bytes, resolve\n"
        f"publish_bytes(resolve({str(target.parent)!r}), 'manifest.json', b'{{}}')\n", tmp_path)
    assert_durable(calls, target)


def test_prepared_shards_are_on_disk_before_their_manifest(tmp_path):
    tree, out = make_tree(tmp_path / "tree", per_class=3), tmp_path / "shards"
    calls = syscalls(
        "from orchestrator.data.prepare import PrepareOptions, prepare_shards\n"
        f"prepare_shards({str(tree)!r}, {str(out)!r}, PrepareOptions(shard_size=4, workers=1))\n", tmp_path)
    manifest = out / "manifest.json"
    assert_durable(calls, manifest)
    published = max(i for i, c in enumerate(calls) if c[0] == "rename" and Path(c[2]) == manifest)
    synced = {Path(c[1]).name for c in calls[:published] if c[0] == "fsync"}
    written = {p.name for p in out.glob("shards-*/*.parquet")}
    assert len(written) == 4 and written <= synced, (written, synced)  # 3 shards of 9 images, and the index
