"""Benchmark: data-parallel search throughput with 1 and 2 Ray Train workers, and the cost of synchronisation.

Each configuration runs the real weight and architecture steps of ``orchestrator.search`` on the training core inside
Ray Train workers (gloo on CPU), each rank reading its share of every global batch through the data feed, for a
fixed number of steps after a short warm-up, timing in the workers so that Ray's start-up is not counted.
"no sync" skips the gradient all-reduce (ranks then drift apart: not a valid search, only the cost baseline).

    .venv/bin/python -m benchmarks.distributed [--steps 60] [--space digits-32]

Prints a table and writes benchmarks/out/distributed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from orchestrator.ray_session import quiet_ray_env, ray_session
from orchestrator.ray_train import worker_runtime
from orchestrator.search import init_state, load_config, open_data, resolve_latency
from orchestrator.search.loop import search_feeds
from orchestrator.search.steps import arch_step, weight_step
from orchestrator.train.runtime import Comm, Precision

OUT = Path(__file__).parent / "out" / "distributed.json"


def _worker(config: dict) -> dict:
    class Unsynced(Comm):
        """This rank among its peers, without averaging: the cost baseline only (ranks drift apart)."""

        def __init__(self, rank: int, world: int) -> None:
            self.rank, self.world = rank, world

    rt = worker_runtime(False, Precision(), 1)
    if not config["sync"]:
        rt.comm = Unsynced(rt.rank, rt.world)
    cfg = load_config(config["config"], [f"space={config['space']}", "warmup_epochs=0"])
    train, holdout = search_feeds(cfg, open_data(cfg), rt)
    state = init_state(cfg, resolve_latency(cfg), train.batches_per_epoch, rt)
    batches, held_out = train.stream(0), holdout.stream(0)

    def step(i: int) -> None:
        weight_step(state, *rt.batch(*next(batches)))
        if i % cfg.arch.update_every == 0:
            arch_step(state, *rt.batch(*next(held_out)))

    for i in range(config["warmup"]):
        step(i)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    t0 = time.perf_counter()
    for i in range(config["steps"]):
        step(config["warmup"] + i)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    elapsed = time.perf_counter() - t0
    return {"seconds": elapsed, "steps": config["steps"], "global_batch": cfg.weight.batch_size}


def run(workers: int, sync: bool, args) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        _worker,
        train_loop_config={"config": str(Path(args.config).resolve()), "space": args.space, "sync": sync, "steps": args.steps,
                           "warmup": args.warmup},
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"bench-{workers}-{int(sync)}-{int(time.time())}", storage_path=args.storage),
    )
    result = trainer.fit()
    m = result.return_value  # rank 0's return value
    secs = m["seconds"]
    return {"workers": workers, "sync": sync, "steps": m["steps"], "seconds": secs,
            "ms_per_step": 1000 * secs / m["steps"], "images_per_s": m["steps"] * m["global_batch"] / secs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--space", default="digits-32")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--storage", default=str(Path("benchmarks/out/ray").resolve()))
    args = p.parse_args()

    quiet_ray_env()
    with ray_session(num_cpus=2):
        rows = [run(1, True, args), run(2, True, args), run(2, False, args)]
    one, two, nosync = rows
    summary = {
        "speedup_2_workers": one["ms_per_step"] / two["ms_per_step"],
        "sync_overhead": two["ms_per_step"] / nosync["ms_per_step"] - 1.0,
    }
    print(f"{'workers':>8} {'sync':>5} {'ms/step':>9} {'images/s':>9}")
    for r in rows:
        print(f"{r['workers']:>8} {str(r['sync']):>5} {r['ms_per_step']:>9.1f} {r['images_per_s']:>9.0f}")
    print(f"speed-up with 2 workers: {summary['speedup_2_workers']:.2f}x; "
          f"synchronisation adds {100 * summary['sync_overhead']:.1f}% per step")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"machine": f"{platform.node()} {platform.processor() or platform.machine()}, 2 cores",
                               "config": vars(args), "rows": rows, **summary}, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
