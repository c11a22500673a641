"""Benchmark: images per second through the project's data path (``Feed``) against the number of loader processes,
and how many loader processes one GPU needs.

Synthetic JPEGs of ImageNet-like sizes are written as an ImageFolder and prepared into local Parquet shards. Each
case reads a whole epoch through ``DataSpec.feed`` (the same code the search and the retrain run), decoding and
augmenting at 224 px with the training transform, with 0 (in this process), 1 and 2 loader processes. The
per-process rate then sizes the loaders of one GPU worker at a given step rate: the measured one where a GPU ran
the search step, else the paper's (about 200 V100 GPU-hours for the official ImageNet search).

    .venv/bin/python -m benchmarks.loader [--images 512 --resolution 224 --batch-size 32 --processes 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from orchestrator.data.prepare import PrepareOptions, prepare_shards
from orchestrator.data.source import DataSpec, open_splits

OUT = Path(__file__).resolve().parent / "out"

# The official ImageNet search (README "8. Cost"): 40 warm-up + 120 search epochs of weight steps over ImageNet
# less 50 held-out images per class, and an architecture step of batch 256 every 5 weight steps in the search epochs.
IMAGENET_TRAIN = 1_281_167 - 50_000
OFFICIAL_IMAGES = 160 * IMAGENET_TRAIN + 120 * IMAGENET_TRAIN // 5
PAPER_GPU_HOURS = 200.0


def paper_images_per_s() -> float:
    """Images per second one GPU processed in the paper's search (total images / 200 GPU-hours)."""
    return OFFICIAL_IMAGES / (PAPER_GPU_HOURS * 3600)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512, help="synthetic JPEGs (8 classes)")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--processes", type=int, nargs="+", default=[0, 1, 2], help="loader process counts to time")
    ap.add_argument("--gpu-images-per-s", type=float, default=None,
                    help="a measured GPU search-step rate to size loaders for (default: the paper's)")
    return ap.parse_args()


def write_jpegs(root: Path, n: int, classes: int = 8, seed: int = 0) -> int:
    """ImageNet-like JPEGs: 375-500 px sides, smooth blobs plus grain (tens of KB each, like ImageNet's)."""
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


def epoch_rate(spec: DataSpec, resolution: int, batch: int) -> dict:
    """Images per second of one epoch of the training split (after a first batch that starts the processes)."""
    splits = open_splits(spec, resolution, role="retrain")
    feed = spec.feed(splits.train, batch_size=batch)
    it = feed.epoch(0)
    next(it)
    n, start = 0, time.perf_counter()
    for x, _ in it:
        n += len(x)
    secs = time.perf_counter() - start
    return {"images": n, "seconds": round(secs, 3), "images_per_s": round(n / secs, 1)}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        tree, shards = Path(tmp) / "tree", Path(tmp) / "shards"
        jpeg_bytes = write_jpegs(tree, args.images)
        prepare_shards(tree, str(shards), PrepareOptions(shard_size=256, row_group_size=64, progress=False))
        for kind, uri in (("shards", str(shards)), ("imagefolder", str(tree))):
            for p in args.processes:
                spec = DataSpec(kind=kind, uri=uri, holdout_per_class=1, valid_fraction=0.1, workers=p,
                                color_jitter="none")
                r = epoch_rate(spec, args.resolution, args.batch_size)
                results[f"{kind}/{p}"] = r
                print(f"{kind:>12} {p} loader process(es): {r['images_per_s']:8.1f} images/s", flush=True)
    one = max(results[f"shards/{p}"]["images_per_s"] / max(p, 1) for p in args.processes if p > 0) \
        if any(p > 0 for p in args.processes) else results["shards/0"]["images_per_s"]
    target = args.gpu_images_per_s or paper_images_per_s()
    need = math.ceil(target / one)
    report = {
        "what": "images/s of one epoch through DataSpec.feed (decode + RandomResizedCrop + flip, uint8 out; "
                "the normalisation runs on the device, in Runtime.batch, and is not timed here)",
        "config": vars(args),
        "dataset": {"images": args.images, "mean_jpeg_kb": round(jpeg_bytes / args.images / 1024, 1)},
        "results": results,
        "sizing": {"images_per_s_per_loader_process": round(one, 1),
                   "gpu_images_per_s": round(target, 1),
                   "gpu_rate_source": "measured" if args.gpu_images_per_s else
                   f"paper: {OFFICIAL_IMAGES:.3g} images in {PAPER_GPU_HOURS:g} V100 GPU-hours",
                   "loader_processes_per_gpu": need},
        "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "torch": str(torch.__version__)},
    }
    print(f"one loader process: {one:.1f} images/s; a GPU at {target:.0f} images/s "
          f"({report['sizing']['gpu_rate_source']}) needs {need} loader processes")
    (OUT / "loader.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {OUT / 'loader.json'}")


if __name__ == "__main__":
    main()
