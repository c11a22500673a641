"""Benchmark: data-parallel search throughput with 1 and 2 Ray Train workers, and the cost of synchronisation.

Each configuration runs the real weight and architecture steps of ``orchestrator.search`` inside Ray Train workers
(gloo on CPU) for a fixed number of steps after a short warm-up, timing in the workers so that Ray's start-up is not
counted. "no sync" skips the gradient all-reduce (ranks then drift apart: not a valid search, only the cost baseline).

    .venv/bin/python -m benchmarks.distributed [--steps 60] [--space digits-32]

Prints a table and writes benchmarks/out/distributed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

OUT = Path(__file__).parent / "out" / "distributed.json"


def _worker(config: dict) -> dict:
    import ray.train
    import torch

    from orchestrator.distributed import allreduce_mean
    from orchestrator.search import init_state, load_config, load_data, resolve_latency
    from orchestrator.search.sampling import batch_indices, generator
    from orchestrator.search.steps import arch_step, no_sync, weight_step

    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = load_config(config["config"], [f"space={config['space']}", "warmup_epochs=0"])
    data = load_data(cfg)
    state = init_state(cfg, resolve_latency(cfg), len(data.train) // cfg.weight.batch_size)
    x, y = data.train.tensors
    hx, hy = data.holdout.tensors
    sync = allreduce_mean if config["sync"] else no_sync
    b = cfg.weight.batch_size

    def step(i: int) -> None:
        idx = batch_indices(len(x), b, generator(0, "bench", i))[rank::world]
        weight_step(state, x[idx], y[idx], sync=sync)
        if i % cfg.arch.update_every == 0:
            hidx = batch_indices(len(hx), cfg.arch.batch_size, generator(0, "bench-h", i))[rank::world]
            arch_step(state, hx[hidx], hy[hidx], sync=sync)

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
    return {"seconds": elapsed, "steps": config["steps"], "global_batch": b}


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

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = [run(1, True, args), run(2, True, args), run(2, False, args)]
    ray.shutdown()
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
