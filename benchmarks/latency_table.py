"""Benchmark: build this CPU's latency tables with the default method and validate them on held-out networks.

Goal, per space: at least 90% of held-out random networks predicted within ±10% of their measured latency and
Spearman rank correlation of at least 0.9; the plain table (entries before calibration) and the measurement's
own noise floor are reported beside it. Prints the figures and writes ``benchmarks/out/latency.json``.

    .venv/bin/python -m benchmarks.latency_table [--spaces proxyless-imagenet,digits-32 --samples 30]

Each table is built as ``nas latency build --space SPACE --local`` builds it by default: batch 1, one thread,
the thread's CPU clock, the C allocator pinned; plain entries timed inside whole networks (minimum of 60
passes); 60 calibration networks (seed 0) and ``--samples`` held-out networks (validation seed 1, a separate
stream, never a calibration network) drawn to spread over the latency range and timed round-robin part by part
with a reference network in every group, until two halves of the rounds agree to 1.5% (20 to 80 rounds). The
held-out figures are in each table's provenance (``validation``). ``--revalidate-seed`` measures another
held-out set afterwards, as ``nas latency validate`` does at a later time; ``--uniform-seed`` one drawn uniformly
(every candidate equally likely: networks bunched in the middle of the range, a harder test of ranking).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from orchestrator.latency.calibrate import CalibrationConfig
from orchestrator.latency.hardware import default_profile
from orchestrator.latency.measure import default_config
from orchestrator.latency.runner import build_table, describe, validate_table
from orchestrator.spaces import get_space

OUT = Path(__file__).resolve().parent / "out"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spaces", default="proxyless-imagenet,digits-32")
    ap.add_argument("--networks", type=int, default=60, help="Calibration networks per space.")
    ap.add_argument("--samples", type=int, default=30, help="Held-out networks per space.")
    ap.add_argument("--allocator", choices=["pinned", "system"], default="pinned",
                    help="'system': leave glibc's allocator as it is (an ablation; run it in a fresh process).")
    ap.add_argument("--out", default="latency.json", help="File name under benchmarks/out.")
    ap.add_argument("--uniform-seed", type=int, default=None,
                    help="Also validate on uniformly drawn networks (a narrow range) of this held-out seed.")
    ap.add_argument("--revalidate-seed", type=int, default=None,
                    help="Also validate each table again, later, on the held-out stream of this seed.")
    return ap.parse_args()


def headline(v: dict) -> dict:
    keys = ("within_10pct", "spearman", "mape", "mean_error")
    return {**{k: v[k] for k in keys}, "plain": {k: v["plain"][k] for k in keys},
            "noise_floor": v["noise_floor"], "whole_pass": {k: v["whole_pass"][k] for k in keys},
            "plain_whole_pass": {k: v["plain_whole_pass"][k] for k in keys},
            "whole_pass_noise_floor": v["whole_pass_noise_floor"],
            "unscaled": {k: v["unscaled"][k] for k in keys}, "drift": v["drift"], "samples": v["samples"],
            "rounds": v["rounds"], "seed": v["seed"], "loadavg_1m": v.get("loadavg_1m")}


def main() -> None:
    args = parse_args()
    profile = default_profile("cpu")
    cfg = default_config("cpu", allocator=args.allocator)
    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.spaces.split(","):
        space = get_space(name)
        cal = CalibrationConfig(networks=args.networks, validate=args.samples)
        t0 = time.perf_counter()
        table = build_table(space, profile, cfg, use_ray=False, calibration=cal)
        build_s = time.perf_counter() - t0
        uri = str(OUT / f"latency-{space.name}-{profile.name}-{args.allocator}.parquet")
        table.save(uri)
        v = table.provenance.validation
        goal = v["within_10pct"] >= 0.9 and v["spearman"] >= 0.9
        entry = {"space": space.name, "hardware": profile.name, "device_name": table.provenance.device_name,
                 "allocator": table.provenance.allocator,
                 "entries": len(table.entries), "build_s": round(build_s, 1), "table": uri, "goal_met": goal,
                 "calibration_rounds": table.provenance.calibration["rounds"],
                 "calibration_noise_floor": table.provenance.calibration["noise_floor"],
                 "validation": headline(v)}
        print(f"{space.name}: {profile.name} ({table.provenance.device_name}), {len(table.entries)} entries, "
              f"built and validated in {build_s:.0f} s (load {os.getloadavg()[0]:.1f})")
        print(f"  {describe(v)}")
        print(f"  goal (>=90% within ±10% and Spearman >= 0.9): {'met' if goal else 'NOT met'}")
        if args.revalidate_seed is not None:
            t0 = time.perf_counter()
            later = validate_table(table, args.samples, args.revalidate_seed, use_ray=False)
            entry["revalidation"] = {**headline(later), "validate_s": round(time.perf_counter() - t0, 1)}
            print(f"  later, seed {args.revalidate_seed}: {describe(later)}")
        if args.uniform_seed is not None:
            t0 = time.perf_counter()
            uniform = validate_table(table, args.samples, args.uniform_seed, use_ray=False, spread=False)
            entry["uniform"] = {**headline(uniform), "validate_s": round(time.perf_counter() - t0, 1)}
            print(f"  uniformly drawn, seed {args.uniform_seed}: {describe(uniform)}")
        results.append(entry)
    settings = {k: getattr(cfg, k) for k in ("batch_size", "threads", "dtype", "warmup", "repeats", "statistic",
                                             "clock", "method", "allocator", "min_rounds", "max_rounds",
                                             "target_floor")}
    (OUT / args.out).write_text(json.dumps({"settings": settings, "networks": args.networks,
                                            "results": results}, indent=2) + "\n")
    print(f"wrote {OUT / args.out}")


if __name__ == "__main__":
    main()
