"""Benchmark: budgeted derivation on the ImageNet space (21 blocks x 7 candidates), time and exactness.

For the official Pixel-1 table (ms) and the analytic ``flops`` proxy (MMAC), and α drawn at three spreads (near
uniform as early in a search, moderate, peaked as late in one), derives the best net under budgets across the
space's range with ``derive_under_budget`` (one budget) and ``derive_front`` (10 budgets, one programme), and with a
random pairwise term between neighbouring blocks. Each single-budget answer without pairwise terms is checked
against an independent exact solver, a mixed-integer programme (scipy's HiGHS, ``mip_rel_gap=0``). Prints the
figures and writes ``benchmarks/out/derive.json``.

    .venv/bin/python -m benchmarks.derive [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from orchestrator.derive import derive_front, derive_under_budget, log_probs_from_alpha
from orchestrator.latency.model import LatencyModel
from orchestrator.latency.profiles import latency_model
from orchestrator.spaces import get_space

OUT = Path(__file__).resolve().parent / "out"


class _WithPairs:
    """A latency model plus ``pair_costs`` (what ``derive`` reads with getattr), for timing the pairwise case."""

    def __init__(self, model: LatencyModel, pair: np.ndarray) -> None:
        self._m, self.pair_costs = model, pair

    def __getattr__(self, name: str):
        return getattr(self._m, name)


def milp_best(lp: np.ndarray, model: LatencyModel, budget: float) -> float:
    """The best log-probability under ``budget`` by an independent exact method (binary programme)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    mask = np.isfinite(lp)
    B, C = lp.shape
    cost = np.nan_to_num(np.asarray(model.costs, dtype=float))
    n = B * C
    one_per_block = np.zeros((B, n))
    for b in range(B):
        one_per_block[b, b * C:(b + 1) * C] = 1.0
    cons = [LinearConstraint(one_per_block, 1, 1),
            LinearConstraint(cost.reshape(1, n), -np.inf, budget - model.fixed)]
    obj = -np.where(mask, lp, 0.0).ravel()
    res = milp(obj, constraints=cons, integrality=np.ones(n), bounds=Bounds(0, mask.ravel().astype(float)),
               options={"mip_rel_gap": 0.0})
    if not res.success:
        raise RuntimeError(res.message)
    return -res.fun


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    space = get_space("proxyless-imagenet")
    rows = []
    for hw in ("pixel1", "flops"):
        model = latency_model(hw, space, runtime="litert" if hw == "pixel1" else "torch")
        lo, hi = model.bounds()
        budgets = list(np.linspace(lo + 0.02 * (hi - lo), hi, 10))
        B, C = np.shape(model.costs)
        rng = np.random.default_rng(0)
        mean_cost = float(np.nanmean(np.asarray(model.costs, dtype=float)))
        pair_model = _WithPairs(model, rng.normal(0.0, 0.05 * mean_cost, size=(B - 1, C, C)))
        for scale in (0.01, 1.0, 3.0):
            lp = log_probs_from_alpha(rng.normal(scale=scale, size=(B, C)), model)
            single, milp_ms, gaps = [], [], []
            for budget in budgets[::3]:
                ms, d = timed(lambda: derive_under_budget(lp, model, budget), args.repeats)
                single.append(ms)
                t0 = time.perf_counter()
                best = milp_best(lp, model, budget)
                milp_ms.append((time.perf_counter() - t0) * 1000)
                gaps.append(best - d.log_prob)
                assert d.predicted_latency <= budget and d.predicted_latency == model.exact(d.arch)
            front_ms, front = timed(lambda: derive_front(lp, model, budgets), args.repeats)
            pair_ms, _ = timed(lambda: derive_under_budget(lp, pair_model, budgets[len(budgets) // 2]), args.repeats)
            row = {"hardware": hw, "unit": model.unit, "alpha_std": scale,
                   "single_budget_ms_median": statistics.median(single), "single_budget_ms_max": max(single),
                   "front_10_budgets_ms": front_ms, "pairwise_single_budget_ms": pair_ms,
                   "milp_ms_median": statistics.median(milp_ms),
                   "max_logp_gap_to_milp": max(gaps), "distinct_nets_on_front": len({d.arch for d in front})}
            rows.append(row)
            print(f"{hw:>6} α std {scale:<4}: one budget {row['single_budget_ms_median']:.1f} ms "
                  f"(max {row['single_budget_ms_max']:.1f}), 10 budgets {front_ms:.1f} ms, pairwise {pair_ms:.1f} ms; "
                  f"MILP {row['milp_ms_median']:.1f} ms, best MILP log-prob - ours {row['max_logp_gap_to_milp']:.2e}; "
                  f"{row['distinct_nets_on_front']} distinct nets over 10 budgets")
    OUT.mkdir(exist_ok=True)
    out = {"space": space.name, "blocks": space.num_blocks, "candidates": len(space.candidates),
           "repeats": args.repeats, "rows": rows}
    (OUT / "derive.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {OUT / 'derive.json'}")


if __name__ == "__main__":
    main()
