"""Issue 22: the images users really have. In an ImageFolder tree every file of a class folder is read or reported
as skipped with the reason; GIF, 16-bit and palette PNG and CMYK JPEG decode to the right 8-bit RGB pixels on
both readers (ImageFolder and shards); a decompression bomb or an empty file is a corrupt image, named, under the
reader's policy; a file name that is not UTF-8 works everywhere and a class folder named so is refused everywhere."""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq  # noqa: TID253
import pytest
from PIL import Image

from orchestrator.data.feed import Feed, FolderRows
from orchestrator.data.folder import scan_imagefolder
from orchestrator.data.manifest import load_manifest
from orchestrator.data.source import DataSpec, open_splits
from orchestrator.data.transforms import UnreadableImage, decode, eval_transform, open_image
from orchestrator.storage import resolve
from tests.conftest import ROOT, assert_one_line_error, run_nas_inprocess
from tests.test_data import make_tree

GREY16 = np.array([[0, 257, 65535, 32896, 1000, 40000]], np.uint16)
GREY16_AS_8BIT = [0, 1, 255, 128, 4, 156]  # v / 257, rounded
PALETTE = [(255, 0, 0), (0, 128, 255), (17, 34, 51)]
NOT_UTF8 = b"caf\xe9.jpg"  # Latin-1 'café.jpg'


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png() -> bytes:
    """A 60-byte PNG whose header claims 20000 x 20000 pixels (400 MP; 1.2 GB as RGB)."""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b""))


def add_unusual_images(folder: Path) -> None:
    """Images that decode, but not as plain 8-bit RGB: animated GIF, 16-bit grey PNG, palette PNG, CMYK JPEG, and a
    JPEG whose name is not UTF-8; plus two files that are not images."""
    frames = [Image.fromarray(np.full((20, 20, 3), v, np.uint8)) for v in (10, 200)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(np.tile(GREY16, (6, 1))).save(folder / "grey16.png")
    assert Image.open(folder / "grey16.png").mode in ("I;16", "I")
    pal = Image.new("P", (3, 8))
    pal.putpalette([c for rgb in PALETTE for c in rgb] + [0] * (768 - 9))
    pal.putdata([i % 3 for i in range(24)])
    pal.save(folder / "palette.png")
    rgb = np.random.default_rng(1).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    Image.fromarray(rgb).save(os.path.join(os.fsencode(folder), NOT_UTF8), format="JPEG")
    (folder / "notes.txt").write_text("not an image")
    (folder / "README").write_text("not an image either")


def add_corrupt(folder: Path) -> None:
    (folder / "bomb.png").write_bytes(bomb_png())
    (folder / "empty.jpg").write_bytes(b"")


def every_file(root: Path) -> set[bytes]:
    """Every file under the class folders, as bytes paths relative to ``root``."""
    broot = os.fsencode(root)
    return {os.path.relpath(os.path.join(d, f), broot) for d, _, fs in os.walk(broot) if d != broot for f in fs}


@pytest.fixture
def mixed(tmp_path) -> Path:
    root = make_tree(tmp_path / "mixed", per_class=8)
    add_unusual_images(root / "ant")
    return root


def nas(*args: str) -> subprocess.CompletedProcess:
    """``nas`` of this checkout, in a subprocess, as a user runs it (the console as a user sees it)."""
    return subprocess.run([sys.executable, "-c", "from orchestrator.cli import main; main()", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


# ---- decoding ----------------------------------------------------------------------------------------------------
def test_unusual_images_decode_to_the_right_8bit_rgb_on_both_readers(mixed):
    ant = mixed / "ant"
    for name, expect in [("grey16.png", np.array(GREY16_AS_8BIT)[None, :, None].repeat(3, 2)),
                         ("palette.png", np.array([PALETTE[i % 3] for i in range(24)]).reshape(8, 3, 3)),
                         ("anim.gif", np.full((20, 20, 3), 10))]:
        folder = np.asarray(open_image(str(ant / name)))  # the ImageFolder reader
        shards = decode((ant / name).read_bytes()).permute(1, 2, 0).numpy()  # the shard reader
        assert folder.dtype == shards.dtype == np.uint8
        np.testing.assert_array_equal(folder[: expect.shape[0]], expect, err_msg=name)
        np.testing.assert_array_equal(shards[: expect.shape[0]], expect, err_msg=name)
    cmyk = np.asarray(open_image(str(ant / "cmyk.jpg")))
    assert cmyk.shape == (24, 24, 3)
    np.testing.assert_array_equal(cmyk, decode((ant / "cmyk.jpg").read_bytes()).permute(1, 2, 0).numpy())


def test_a_decompression_bomb_and_an_empty_file_are_corrupt_images_named_in_one_line(tmp_path):
    add_corrupt(tmp_path)
    with pytest.raises(UnreadableImage) as e:
        open_image(str(tmp_path / "bomb.png"))
    assert isinstance(e.value, OSError) and "\n" not in str(e.value)
    assert str(e.value).startswith(f"{tmp_path / 'bomb.png'}: cannot read image (decompression bomb")
    with pytest.raises(OSError, match=r"empty.jpg: cannot read image"):
        open_image(str(tmp_path / "empty.jpg"))


# ---- every file accounted for ------------------------------------------------------------------------------------
def test_every_file_of_a_class_folder_is_read_or_reported_skipped(mixed, caplog):
    add_corrupt(mixed / "bee")
    files = every_file(mixed)
    with caplog.at_level(logging.WARNING, logger="orchestrator.data.folder"):
        tree = scan_imagefolder(mixed)
    listed = {os.path.relpath(os.fsencode(p), os.fsencode(mixed)) for p, _ in tree.samples}
    skipped = {os.fsencode(rel): why for rel, why in tree.skipped}
    assert listed | set(skipped) == files and not listed & set(skipped)
    assert set(skipped) == {b"ant/notes.txt", b"ant/README"}
    assert all(why.startswith("not an image file") for why in skipped.values())
    warned = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "ant/notes.txt: skipped, not an image file (extension '.txt'" in warned
    assert "ant/README: skipped, not an image file (no extension)" in warned
    assert b"ant/anim.gif" in listed and os.path.join(b"ant", NOT_UTF8) in listed

    # the ImageFolder reader: every good image reads; a corrupt one stops it, named (its corrupt-image policy)
    paths = [p for p, _ in tree.samples]
    good = [i for i, p in enumerate(paths) if not p.endswith(("bomb.png", "empty.jpg"))]
    rows = FolderRows(tree.samples, good, eval_transform(16))
    x, y = next(Feed(rows, batch_size=len(good), shuffle=False).epoch(0))
    assert tuple(x.shape) == (len(good), 3, 16, 16) and len(y) == len(files) - 4
    bad = FolderRows(tree.samples, range(len(paths)), eval_transform(16))
    with pytest.raises(OSError) as e:
        list(Feed(bad, batch_size=4, shuffle=False).epoch(0))
    assert str(e.value) == f"{mixed / 'bee' / 'bomb.png'}: cannot read image (decompression bomb: " \
                           f"{str(e.value).split('(decompression bomb: ', 1)[1]}" and "\n" not in str(e.value)


def test_prepare_accounts_for_every_file_on_the_console(mixed, tmp_path):
    add_corrupt(mixed / "bee")
    files = every_file(mixed)
    out = tmp_path / "shards"
    refused = nas("data", "prepare", "--imagefolder", str(mixed), "--out", str(out))  # default: --on-corrupt fail
    assert refused.returncode == 2 and not out.exists()
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "bee/bomb.png: corrupt image (decompression bomb" in errors[0] or \
        "bee/empty.jpg: corrupt image (empty file)" in errors[0], errors[0]

    proc = nas("data", "prepare", "--imagefolder", str(mixed), "--out", str(out), "--on-corrupt", "skip",
               "--shard-size", "8")
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    for line in ("ant/notes.txt: skipped, not an image file", "ant/README: skipped, not an image file",
                 "skipping corrupt image bee/bomb.png (decompression bomb",
                 "skipping corrupt image bee/empty.jpg (empty file)"):
        assert line in err, err
    m = load_manifest(resolve(str(out)))
    assert f"{m.num_samples} images, 3 classes" in proc.stdout
    assert "2 corrupt skipped, 2 not image files skipped" in proc.stdout, proc.stdout
    assert set(m.skipped) == {"bee/bomb.png", "bee/empty.jpg"}
    assert set(m.provenance["not_images"]) == {"ant/notes.txt", "ant/README"}
    assert m.num_samples + len(m.skipped) + len(m.provenance["not_images"]) == len(files)
    stored = set()
    for s in m.shards:
        stored |= set(pq.read_table(out / s.path, columns=["path"]).column("path").to_pylist())
    assert "ant/caf\\xe9.jpg" in stored and len(stored) == m.num_samples  # the non-UTF-8 name, printable
    json.loads((out / "manifest.json").read_text())


def test_a_search_runs_on_the_mixed_folder_and_reports_the_skipped_files_under_quiet(mixed, tmp_path):
    out = tmp_path / "run"
    proc = nas("search", "--config", str(ROOT / "configs" / "tiny.yaml"), "--quiet", "--out", str(out),
               "--set", "data.kind=imagefolder", "--set", f"data.uri={mixed}", "--set", "num_classes=3",
               "--set", "data.holdout_per_class=1", "--set", "data.valid_fraction=0.25", "--set", "epochs=2",
               "--set", "warmup_epochs=1", "--set", "weight.batch_size=4", "--set", "arch.batch_size=2")
    assert proc.returncode == 0, proc.stderr
    assert "ant/notes.txt: skipped, not an image file" in proc.stderr, proc.stderr
    assert json.loads((out / "result.json").read_text())["arch"].startswith("tiny[c3]:")


# ---- names that are not UTF-8 ------------------------------------------------------------------------------------
def test_a_class_folder_named_in_another_encoding_is_refused_everywhere(mixed, tmp_path, capsys):
    folder = os.path.join(os.fsencode(mixed), b"d\xfcne")  # Latin-1 'düne'
    os.mkdir(folder)
    Image.new("RGB", (8, 8)).save(os.path.join(folder, b"img.jpg").decode(errors="surrogateescape"))
    shown = f"{mixed}/d\\xfcne: class folder name is not valid UTF-8"
    with pytest.raises(ValueError, match=shown.replace("\\", "\\\\")):
        open_splits(DataSpec(kind="imagefolder", uri=str(mixed), holdout_per_class=1), 16)
    out = tmp_path / "shards"
    proc = run_nas_inprocess(capsys, "data", "prepare", "--imagefolder", str(mixed), "--out", str(out))
    assert proc.returncode == 2
    assert_one_line_error(proc, shown)
    assert not out.exists()
