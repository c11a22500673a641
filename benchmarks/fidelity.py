"""Benchmark: the digits demo search under each fidelity preset, same config and seed, side by side (issue 14).

Each preset (``project``: this project's defaults; ``official``: the official code's defaults, ``full_v2``;
``paper``: the official code with the paper's two-path mode) runs ``configs/demo.yaml`` with ``--set
fidelity=NAME`` and nothing else changed, then the derived net is retrained from scratch in the same process with
``orchestrator.retrain.train_net`` and ``configs/retrain-digits.yaml`` (identical for every preset). Reported per
preset: final E[LAT] and the derived net's exact latency (MMAC), the derived architecture, the entropy of α, the
number of architecture steps, every fidelity switch as resolved (``switches``), the supernet's accuracy on the digits validation split (the derived path, batch
statistics), the retrained top-1 on the same split, and the seconds of each part.
Presets run in parallel processes, one thread each (``--workers``). A preset may carry ``+key=value`` overrides, so
that single switches can be compared (``--presets project,project+arch.latency_probs=pair``), over ``--seeds``.

    .venv/bin/python -m benchmarks.fidelity [--presets project,official,paper] [--seeds 0] [--workers 2]

Prints a table and writes ``benchmarks/out/fidelity.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from orchestrator.retrain import load_retrain_config, train_net
from orchestrator.search import load_config, run_search
from orchestrator.search.fidelity import PROJECT

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "fidelity.json"


def run_preset(job: tuple[str, int], config: str, recipe_path: str, retrain_epochs: int | None) -> dict:
    """One search (and retrain) of ``job = (variant, seed)``; a variant is a preset name, optionally followed by
    ``+key=value`` overrides (e.g. ``project+init.zero_last_gamma=false``)."""
    variant, seed = job
    name, *extra = variant.split("+")
    torch.set_num_threads(1)
    cfg = load_config(config, [f"fidelity={name}", *extra, f"seed={seed}"])
    t0 = time.perf_counter()
    result = run_search(cfg)
    search_s = time.perf_counter() - t0
    top1, retrain_s, epochs = None, 0.0, 0
    if retrain_epochs != 0:
        recipe = load_retrain_config(recipe_path, [f"epochs={retrain_epochs}"] if retrain_epochs else [])
        t0 = time.perf_counter()
        _, state = train_net(result.arch, recipe)
        top1, retrain_s, epochs = state.history[-1]["val_accuracy"], time.perf_counter() - t0, recipe.epochs
    return {"preset": variant, "seed": seed, "arch": result.arch, "expected_latency": result.expected_latency,
            "exact_latency": result.exact_latency, "unit": result.unit, "target": result.target,
            "entropy": result.entropy, "arch_steps": result.arch_steps, "steps": result.steps,
            "supernet_valid_accuracy": result.valid_accuracy, "retrained_top1": top1,
            "retrain_epochs": epochs, "search_s": search_s, "retrain_s": retrain_s,
            "switches": {key: _dotted(result.config, key) for key in PROJECT}}


def _dotted(config: dict, key: str) -> object:
    """The value of a dotted key (``arch.grad_mode``) in a config dict."""
    node: object = config
    for part in key.split("."):
        node = node[part]  # type: ignore[index]
    return node


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="project,official,paper")
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    p.add_argument("--recipe", default=str(ROOT / "configs" / "retrain-digits.yaml"))
    p.add_argument("--retrain-epochs", type=int, default=None,
                   help="override the recipe's epochs (0: no retraining)")
    p.add_argument("--seeds", default="0", help="comma-separated search seeds")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    jobs = [(v, int(seed)) for seed in args.seeds.split(",") for v in args.presets.split(",")]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        rows = list(pool.map(run_preset, jobs, [args.config] * len(jobs), [args.recipe] * len(jobs),
                             [args.retrain_epochs] * len(jobs)))
    wall = time.perf_counter() - t0
    print(f"{Path(args.config).name}, {args.workers} processes x 1 thread, {wall:.0f} s wall")
    print(f"{'preset':36s} {'seed':>4s} {'E[LAT]':>7s} {'exact':>6s} {'entropy':>7s} {'arch st':>7s} "
          f"{'supernet':>8s} {'top-1':>6s} {'search s':>8s}  derived architecture")
    for r in rows:
        top1 = "-" if r["retrained_top1"] is None else f"{r['retrained_top1']:.3f}"
        print(f"{r['preset']:36s} {r['seed']:4d} {r['expected_latency']:7.3f} {r['exact_latency']:6.3f} "
              f"{r['entropy']:7.3f} {r['arch_steps']:7d} {r['supernet_valid_accuracy']:8.3f} {top1:>6s} "
              f"{r['search_s']:8.0f}  {r['arch']}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"config": Path(args.config).name, "wall_s": wall, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
