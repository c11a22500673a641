"""Benchmark: the demo's sweep with ``derive: argmax`` (the paper's soft target) and with ``derive: budget`` (a hard
budget), side by side.

Both sweeps run the demo's grid (``configs/demo-sweep.yaml``: this CPU, measured, and ``flops`` x 2 targets, one
shared warm-up, every derived net measured on its hardware and retrained). For each derivation the benchmark
counts the derived nets whose predicted and whose measured latency exceed their target, and reads the Pareto
fronts' hypervolume per hardware from MLflow; both sweeps share the hypervolume's reference point, so they compare.
Prints the figures and writes ``benchmarks/out/budget.json``.

    .venv/bin/python -m benchmarks.budget [--hardware flops]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from orchestrator.demo import demo_sweep, ensure_cpu_table
from orchestrator.ray_session import quiet_ray_env
from orchestrator.sweep import run_sweep
from orchestrator.sweep.config import base_config
from orchestrator.sweep.report import compare_fronts

OUT = Path(__file__).resolve().parent / "out"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hardware", action="append", default=[], help="restrict the grid (flops, this-cpu)")
    args = ap.parse_args()
    quiet_ray_env()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    work = OUT / "budget-work"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    names, report = {}, {"machine": {"cpus": __import__("os").cpu_count()}, "derive": {}}
    for derive in ("argmax", "budget"):
        sweep = demo_sweep(work, f"bench-{derive}-{stamp}")
        grid = tuple(g for g in sweep.grid if not args.hardware or g.hardware in args.hardware
                     or (g.table and "this-cpu" in args.hardware))
        sweep = sweep.replace(grid=grid, overrides=(*sweep.overrides, f"derive={derive}"))
        for g in grid:
            if g.table:
                ensure_cpu_table(g.table, base_config(sweep).space)
        t0 = time.time()
        res = run_sweep(sweep)
        names[derive] = res.name
        rows = [{"hardware": t["hardware"], "target": t["target"], "unit": t["unit"], "arch": t["arch"],
                 "predicted": t["predicted_latency"], "measured": t["measured_latency"],
                 "top1": t.get("val_accuracy")} for t in res.trials]
        report["derive"][derive] = {
            "experiment": res.name, "wall_seconds": round(time.time() - t0, 1), "failed": len(res.errors),
            "nets": len(rows), "predicted_over_target": sum(r["predicted"] > r["target"] for r in rows),
            "measured_over_target": sum(r["measured"] > r["target"] for r in rows), "trials": rows}
        tracking_uri = res.tracking_uri
    fronts = compare_fronts(tracking_uri, list(names.values()), work / "pareto", "argmax vs budget")
    for derive, name in names.items():
        report["derive"][derive]["hypervolume"] = {hw: s["series"][name]["hypervolume"]
                                                   for hw, s in fronts.summary.items() if name in s["series"]}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "budget.json").write_text(json.dumps(report, indent=1, default=str))
    for derive, r in report["derive"].items():
        hv = ", ".join(f"{hw} {v:.4g}" for hw, v in r["hypervolume"].items())
        print(f"derive {derive:>6}: {r['nets']} nets, over target: predicted {r['predicted_over_target']}, "
              f"measured {r['measured_over_target']}; hypervolume {hv}")
        for t in sorted(r["trials"], key=lambda t: (t["hardware"], t["target"])):
            print(f"    {t['hardware']:>16} target {t['target']:<8.4g} predicted {t['predicted']:<8.4g} "
                  f"measured {t['measured']:<8.4g} {t['unit']:<5} top-1 {t['top1']:.3f}  {t['arch']}")
    print(f"wrote {OUT / 'budget.json'} (plots: {work / 'pareto'})")


if __name__ == "__main__":
    main()
