"""Peak memory and time of one supernet weight step (CPU), against the standalone net and an all-paths mixed op.

Three ways to take one SGD step at the same batch size on the same architecture:

* ``supernet``: ``orchestrator.search.weight_step`` (one sampled path; α is set so that the sample is the
  architecture under test);
* ``standalone``: the extracted ``ProxylessNet`` of that architecture, same loss and optimiser;
* ``all-paths``: every candidate of every block runs and is summed with softmax weights (DARTS-style), via
  ``MixedBlock``'s gated forward over all allowed candidates.

Memory method: ``torch.profiler`` with ``profile_memory=True`` records every CPU allocation and free inside
the step; the running sum of those events, in time order, peaks at the step's transient memory (activations
kept for backward, gradients, temporaries). Persistent memory (parameters, optimiser buffers) is counted
separately from the tensors themselves, as ``params_mib``; the ratios use the transient peak, which is what
grows with batch size and decides whether a step fits. Time is the median wall time of several steps on one
thread. Run: ``.venv/bin/python -m benchmarks.supernet_memory``; writes ``benchmarks/out/supernet_memory.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from orchestrator.latency.flops import flops_model
from orchestrator.search import config_from_dict, weight_step
from orchestrator.search.state import SearchState
from orchestrator.spaces import DIGITS, SearchSpace
from orchestrator.supernet import ArchLogits, Supernet

OUT = Path(__file__).resolve().parent / "out" / "supernet_memory.json"
MIB = 2**20


def spaces() -> dict[int, SearchSpace]:
    """digits-32 with 2, 4 and 7 candidates per block (7 where ``zero`` is allowed, 6 elsewhere)."""
    return {
        2: dataclasses.replace(DIGITS, name="digits-32-c2", kernels=(3, 5), expands=(3,), allow_zero=False),
        4: dataclasses.replace(DIGITS, name="digits-32-c4", kernels=(3, 5), expands=(3, 6), allow_zero=False),
        7: DIGITS,
    }


def peak_step_bytes(step) -> int:
    """Peak of the running allocation total during one call of ``step`` (allocator events from the profiler)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    total = peak = 0
    for e in events:
        total += e.self_cpu_memory_usage
        peak = max(peak, total)
    return peak


def median_time(step, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def run(batch: int, reps: int) -> dict:
    torch.set_num_threads(1)
    rows = []
    gen = torch.Generator().manual_seed(0)
    for n_cand, space in spaces().items():
        x = torch.randn(batch, 3, space.resolution, space.resolution, generator=gen)
        y = torch.randint(0, space.num_classes, (batch,), generator=gen)
        state = build_state(space, batch)
        arch = space.largest_arch()
        idx = space.indices(arch)
        with torch.no_grad():  # make the sampled path the architecture under test
            state.logits.alpha.fill_(-30.0)
            for b, c in enumerate(idx):
                state.logits.alpha[b, c] = 30.0
        net = state.supernet.extract(arch)
        sgd = lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=4e-5)  # noqa: E731
        opt_net = sgd(net.parameters())
        opt_all = sgd(state.supernet.parameters())
        allowed = [[c for c, ok in enumerate(row) if ok] for row in space.allowed_mask()]

        def step_supernet():
            weight_step(state, x, y)

        def step_standalone():
            net.train()
            opt_net.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y, label_smoothing=0.1).backward()
            opt_net.step()

        def step_all_paths():
            state.supernet.train()
            opt_all.zero_grad(set_to_none=True)
            w = torch.softmax(torch.zeros(len(space.candidates)), 0)  # fixed mixing weights; α is not trained here
            gates = [w[row] / w[row].sum() for row in allowed]
            F.cross_entropy(state.supernet(x, allowed, gates), y, label_smoothing=0.1).backward()
            opt_all.step()

        methods = (("supernet", step_supernet, state.supernet.parameters(), state.weight_opt),
                   ("standalone", step_standalone, net.parameters(), opt_net),
                   ("all-paths", step_all_paths, state.supernet.parameters(), opt_all))
        times: dict[str, list[float]] = {m[0]: [] for m in methods}
        peaks = {}
        for name, step, _, _ in methods:
            step()
            step()  # optimiser buffers exist from here on, as in training
            peaks[name] = peak_step_bytes(step)
        for _ in range(reps):  # interleaved, so that load from other processes hits all methods alike
            for name, step, _, _ in methods:
                times[name].append(median_time(step, 1))
        for name, _, params, opt in methods:
            persistent = tensor_bytes(params) + tensor_bytes(
                v for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
            rows.append({"candidates": n_cand, "method": name, "peak_step_mib": peaks[name] / MIB,
                         "params_mib": persistent / MIB, "step_ms": statistics.median(times[name]) * 1e3,
                         "arch": arch.encode()})
    by = {(r["candidates"], r["method"]): r for r in rows}
    for r in rows:
        base = by[(r["candidates"], "standalone")]
        r["mem_vs_standalone"] = r["peak_step_mib"] / base["peak_step_mib"]
        r["time_vs_standalone"] = r["step_ms"] / base["step_ms"]
    return {"batch": batch, "reps": reps, "threads": 1, "torch": torch.__version__, "rows": rows}


def build_state(space: SearchSpace, batch: int):
    """A search state on ``space`` (which need not be registered), with the default weight optimiser."""
    cfg = config_from_dict({"space": "digits-32", "target": 1.0, "epochs": 2, "warmup_epochs": 1,
                            "weight": {"batch_size": batch}, "arch": {"regularizer": "add#linear"}})
    torch.manual_seed(0)
    supernet, logits = Supernet(space), ArchLogits(space)
    w = cfg.weight
    wopt = torch.optim.SGD(supernet.parameters(), lr=w.lr, momentum=w.momentum, nesterov=w.nesterov,
                           weight_decay=w.weight_decay)
    aopt = torch.optim.Adam([logits.alpha], lr=1e-3, betas=(0.0, 0.999))
    return SearchState(cfg, space, flops_model(space), supernet, logits, wopt, aopt, steps_per_epoch=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    report = run(args.batch, args.reps)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=1))
    head = f"{'cands':>5} {'method':>10} {'peak MiB':>9} {'xstd':>6} {'ms/step':>8} {'xstd':>6} {'params+opt MiB':>14}"
    print(f"digits-32 weight step, batch {report['batch']}, 1 thread, CPU, torch {report['torch']}")
    print(head)
    for r in report["rows"]:
        print(f"{r['candidates']:>5} {r['method']:>10} {r['peak_step_mib']:>9.2f} {r['mem_vs_standalone']:>6.2f} "
              f"{r['step_ms']:>8.1f} {r['time_vs_standalone']:>6.2f} {r['params_mib']:>14.2f}")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
