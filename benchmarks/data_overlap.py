"""Benchmark: does decoding overlap compute? A search weight step fed from memory against the same step fed from a
JPEG folder and from Parquet shards at 224 px, with loader processes on the spare cores.

The model is the tiny space at 224 px (``tiny[c8,r224]``): cheap enough that the data path, not the CPU's slow
convolutions, would be the bottleneck if decoding did not overlap the step. Each case runs the real search weight
step (``search.steps.weight_step`` on the training core) for ``--steps`` steps after a warm-up; the in-memory
case cycles batches decoded beforehand. The figure is seconds per step in memory divided by seconds per step fed
by the loader (1.0 = decoding fully hidden), with decoding in the step's own process (0 loader processes: what
decoding costs when it does not overlap) and in ``--processes`` loader processes. Goal: at least 0.9 with loader
processes.

    .venv/bin/python -m benchmarks.data_overlap [--images 384 --batch-size 32 --steps 20 --processes 1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.loader import write_jpegs
from orchestrator.data.prepare import PrepareOptions, prepare_shards
from orchestrator.search import config_from_dict, init_state, open_data
from orchestrator.search.steps import weight_step
from orchestrator.latency.profiles import latency_model
from orchestrator.train.runtime import Runtime

OUT = Path(__file__).resolve().parent / "out"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=384, help="synthetic JPEGs (8 classes)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20, help="timed weight steps per case (after 3 warm-up steps)")
    ap.add_argument("--processes", type=int, default=1, help="loader processes (the spare cores)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the step")
    return ap.parse_args()


def seconds_per_step(state, batches, steps: int, rt: Runtime) -> float:
    for _ in range(3):
        weight_step(state, *rt.batch(*next(batches)))
    start = time.perf_counter()
    for _ in range(steps):
        weight_step(state, *rt.batch(*next(batches)))
    return (time.perf_counter() - start) / steps


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    rt = Runtime()
    results = {}
    with tempfile.TemporaryDirectory(prefix="overlap-bench-") as tmp:
        tree, shards = Path(tmp) / "tree", Path(tmp) / "shards"
        write_jpegs(tree, args.images)
        prepare_shards(tree, str(shards), PrepareOptions(shard_size=128, row_group_size=32, progress=False))
        base = {"space": "tiny", "num_classes": 8, "resolution": 224, "hardware": "flops", "target": 0.5,
                "epochs": 100, "warmup_epochs": 99, "weight": {"batch_size": args.batch_size},
                "arch": {"regularizer": "add#linear"}}
        cases = [("memory", "shards", str(shards), 0)]
        for kind, uri in (("imagefolder", str(tree)), ("shards", str(shards))):
            cases += [(f"{kind}/0", kind, uri, 0), (f"{kind}/{args.processes}", kind, uri, args.processes)]
        for name, kind, uri, processes in cases:
            data = {"kind": kind, "uri": uri, "holdout_per_class": 2, "valid_fraction": 0.05, "workers": processes,
                    "color_jitter": "normal"}
            cfg = config_from_dict({**base, "data": data})
            splits = open_data(cfg)
            feed = cfg.data.feed(splits.train, batch_size=args.batch_size)
            state = init_state(cfg, latency_model("flops", cfg.search_space), feed.batches_per_epoch, rt)
            if name == "memory":  # decoded beforehand: the step alone
                cached = [b for _, b in zip(range(feed.batches_per_epoch), feed.stream(0))]
                batches = itertools.cycle(cached)
            else:
                batches = feed.stream(0)
            results[name] = seconds_per_step(state, batches, args.steps, rt)
            print(f"{name:>14}: {results[name] * 1000:8.1f} ms per weight step", flush=True)
    ratios = {k: round(results["memory"] / v, 3) for k, v in results.items() if k != "memory"}
    report = {
        "what": "seconds per search weight step (tiny[c8,r224], batch %d) in memory / fed by the loader"
                % args.batch_size,
        "config": vars(args),
        "ms_per_step": {k: round(v * 1000, 1) for k, v in results.items()},
        "ratio_memory_over_fed": ratios,
        "goal": ">= 0.9",
        "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "torch": str(torch.__version__)},
    }
    print("in memory / fed (loader processes after the slash; 0 = decoded in the step's process): "
          + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()) + " (goal >= 0.9 with loader processes)")
    (OUT / "data_overlap.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {OUT / 'data_overlap.json'}")


if __name__ == "__main__":
    main()
