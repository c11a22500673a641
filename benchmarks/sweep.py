"""Benchmark: the demo's runtime, and what a shared warm-up saves a sweep.

Two figures, printed and written to ``benchmarks/out/sweep.json``:

* ``demo``: wall time of the full demo (table build, 2 hardware x 2 targets, retrain, fronts) on this machine.
* ``warmup``: the demo's search grid (no retrain, so only the search differs) run twice: every trial forking
  from one shared warm-up, and every trial doing its own warm-up (``shared_warmup: false``). Cost is
  worker-seconds (Train workers x wall of their runs) and the sweeps' wall time.

    .venv/bin/python -m benchmarks.sweep [--skip-demo] [--hardware flops]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from orchestrator.demo import demo_sweep, ensure_cpu_table, main as run_demo
from orchestrator.sweep import run_sweep
from orchestrator.sweep.config import base_config

OUT = Path(__file__).resolve().parent / "out"


def warmup_saving(out: Path, hardware: tuple[str, ...]) -> dict:
    """The same search-only sweep with and without a shared warm-up; costs from the sweeps' own accounting."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    sweep = demo_sweep(out, f"bench-shared-{stamp}")
    grid = tuple(g for g in sweep.grid if not hardware or g.hardware in hardware or
                 (g.table and "this-cpu" in hardware))
    sweep = sweep.replace(grid=grid, retrain=None)
    for g in grid:
        if g.table:
            ensure_cpu_table(g.table, base_config(sweep).space)
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    independent = sweep.replace(name=f"bench-indep-{stamp}", shared_warmup=False)
    for mode, cfg in (("shared", sweep), ("independent", independent)):
        res = run_sweep(cfg)
        figures[mode] = {"experiment": res.name, "trials": len(res.trials), "failed": len(res.errors),
                         "wall_seconds": res.wall_seconds, "worker_seconds": res.worker_seconds,
                         "warmup_worker_seconds": res.warmup_worker_seconds}
    s, i = figures["shared"], figures["independent"]
    figures["saving_worker_seconds"] = i["worker_seconds"] - s["worker_seconds"]
    figures["saving_fraction"] = figures["saving_worker_seconds"] / i["worker_seconds"] if i["worker_seconds"] else None
    figures["wall_saving_fraction"] = 1 - s["wall_seconds"] / i["wall_seconds"] if i["wall_seconds"] else None
    cfg = base_config(sweep)
    figures["search"] = {"space": cfg.space, "epochs": cfg.epochs, "warmup_epochs": cfg.warmup_epochs,
                         "grid": {g.hardware: list(g.targets or g.relative) for g in grid}}
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-demo", action="store_true", help="Only the shared-vs-independent warm-up comparison.")
    ap.add_argument("--hardware", action="append", default=[],
                    help="Restrict the warm-up comparison to these grid hardware (flops, this-cpu); default all.")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    OUT.mkdir(parents=True, exist_ok=True)
    work = OUT / "sweep-work"
    result: dict = {"machine": {"cpus": __import__("os").cpu_count()}}
    saved = OUT / "sweep.json"
    if args.skip_demo and saved.exists():  # keep the last measured demo figure
        result["demo"] = json.loads(saved.read_text()).get("demo")
    if not args.skip_demo:
        t0 = time.time()
        demo = run_demo(str(work / "demo"))
        result["demo"] = {"wall_seconds": time.time() - t0, "sweep_wall_seconds": demo.wall_seconds,
                          "trials": len(demo.trials), "failed": len(demo.errors),
                          "worker_seconds": demo.worker_seconds, "goal_seconds": 600}
        saved.write_text(json.dumps(result, indent=1))  # the demo figure survives a failure below
    result["warmup"] = warmup_saving(work / "warmup", tuple(args.hardware))
    (OUT / "sweep.json").write_text(json.dumps(result, indent=1))
    if result.get("demo"):
        d = result["demo"]
        print(f"demo: {d['wall_seconds']:.0f} s wall ({d['trials']} trials, {d['failed']} failed; goal < 600 s)")
    w = result["warmup"]
    print(f"shared warm-up:      {w['shared']['worker_seconds']:.0f} worker-s, "
          f"{w['shared']['wall_seconds']:.0f} s wall "
          f"({w['shared']['trials']} trials)")
    print(f"independent warm-up: {w['independent']['worker_seconds']:.0f} worker-s, "
          f"{w['independent']['wall_seconds']:.0f} s wall")
    print(f"saving: {w['saving_worker_seconds']:.0f} worker-s ({100 * (w['saving_fraction'] or 0):.0f}%), "
          f"wall {100 * (w['wall_saving_fraction'] or 0):.0f}%")
    print(f"wrote {OUT / 'sweep.json'}")


if __name__ == "__main__":
    main()
