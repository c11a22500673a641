"""Benchmark: images per second through the shard loader on 2 cores, with and without JPEG decoding.

Synthetic JPEGs (ImageNet-like sizes) are written as an ImageFolder, prepared into local shards, and streamed
through ``ShardStream`` + ``DataLoader(num_workers=2)``: raw bytes only, decode + train transform (RandomResizedCrop,
flip, normalise), decode + eval transform; and torchvision's ``ImageFolder`` with the train transform for
comparison. Prints the figures and writes them to ``benchmarks/out/loader.json``.

    .venv/bin/python -m benchmarks.loader [--images 768 --resolution 224 --workers 2 --batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from orchestrator.data.manifest import load_index, load_manifest
from orchestrator.data.prepare import PrepareOptions, prepare_shards
from orchestrator.data.shards import ShardSet, ShardStream
from orchestrator.storage import resolve
from orchestrator.data.transforms import eval_transform, train_transform

OUT = Path(__file__).resolve().parent / "out"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=768, help="synthetic JPEGs (10 classes)")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader processes (the cores used)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2, help="timed passes per case (after one warm-up batch)")
    return ap.parse_args()


def write_jpegs(root: Path, n: int, classes: int = 10, seed: int = 0) -> int:
    """ImageNet-like JPEGs: 375-500 px sides, smooth blobs plus grain (tens of KB each, like ImageNet's)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n):
        d = root / f"class{i % classes:02d}"
        d.mkdir(parents=True, exist_ok=True)
        h, w = int(rng.integers(375, 500)), int(rng.integers(400, 500))
        coarse = Image.fromarray(rng.integers(0, 256, (h // 24, w // 24, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((w, h), Image.BICUBIC), dtype=np.int16)
        img = np.clip(smooth + rng.integers(-10, 11, (h, w, 1), dtype=np.int16), 0, 255).astype(np.uint8)
        path = d / f"{i:06d}.jpg"
        Image.fromarray(img).save(path, format="JPEG", quality=90)
        total += path.stat().st_size
    return total


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)


def _collate_raw(batch: list) -> list:
    return batch  # encoded images differ in length: keep the list


def timed(loader: DataLoader, epochs: int, set_epoch=None) -> dict:
    """Images per second over ``epochs`` passes, after a warm-up batch that starts the worker processes."""
    next(iter(loader))
    n, start = 0, time.perf_counter()
    for e in range(epochs):
        if set_epoch:
            set_epoch(e)
        for batch in loader:
            n += len(batch[0]) if isinstance(batch, (list, tuple)) and torch.is_tensor(batch[0]) else len(batch)
    secs = time.perf_counter() - start
    return {"images": n, "seconds": round(secs, 3), "images_per_s": round(n / secs, 1)}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        tree, shards = Path(tmp) / "tree", Path(tmp) / "shards"
        t0 = time.perf_counter()
        jpeg_bytes = write_jpegs(tree, args.images)
        t1 = time.perf_counter()
        prepare_shards(tree, str(shards), PrepareOptions(shard_size=256, row_group_size=64, workers=args.workers,
                                                         progress=False))
        t2 = time.perf_counter()
        loc = resolve(str(shards))
        m = load_manifest(loc)
        rows = load_index(loc, m)
        sset = ShardSet(loc.uri, None, tuple(s.path for s in m.shards), m.num_classes)
        kw = dict(batch_size=args.batch_size, num_workers=args.workers, worker_init_fn=_one_thread)
        cases = {
            "shards_raw_bytes": (ShardStream(sset, rows, decode=False, shuffle=True), _collate_raw),
            "shards_decode_train": (ShardStream(sset, rows, transform=train_transform(args.resolution),
                                                shuffle=True), None),
            "shards_decode_eval": (ShardStream(sset, rows, transform=eval_transform(args.resolution)), None),
        }
        results = {}
        for name, (ds, collate) in cases.items():
            results[name] = timed(DataLoader(ds, collate_fn=collate, **kw), args.epochs, ds.set_epoch)
            print(f"{name:>24}: {results[name]['images_per_s']:8.1f} images/s")
        from torchvision.datasets import ImageFolder

        folder = ImageFolder(str(tree), transform=train_transform(args.resolution))
        results["imagefolder_decode_train"] = timed(DataLoader(folder, shuffle=True, **kw), args.epochs)
        print(f"{'imagefolder_decode_train':>24}: {results['imagefolder_decode_train']['images_per_s']:8.1f} images/s")
    report = {
        "what": "images/s through DataLoader(num_workers) over local Parquet shards of synthetic JPEGs",
        "config": vars(args),
        "dataset": {"images": args.images, "classes": m.num_classes, "shards": len(m.shards),
                    "mean_jpeg_kb": round(jpeg_bytes / args.images / 1024, 1),
                    "write_jpegs_s": round(t1 - t0, 2), "prepare_s": round(t2 - t1, 2),
                    "prepare_images_per_s": round(args.images / (t2 - t1), 1)},
        "results": results,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
    }
    print(f"{'prepare (verify + write)':>24}: {report['dataset']['prepare_images_per_s']:8.1f} images/s")
    (OUT / "loader.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {OUT / 'loader.json'}")


if __name__ == "__main__":
    main()
