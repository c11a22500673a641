"""Benchmark: the cost of a ProxylessNAS search against regular training of the net it finds (issue 15).

On the real ``proxyless-imagenet`` supernet at 224 px, each phase of a search is timed directly with the search's
own step functions, on the same batch, round after round in rotating order:

* warm-up weight step and search weight step (``weight_step``, one sampled path, SGD; a new path each round);
* architecture step, ``two`` mode (``arch_step``: the active candidate with autograd, the inactive one without, no
  weight in autograd), and ``full_v2`` (every candidate of a block runs), for information;
* the plain two-path computation the project used before (both candidates with autograd, weights requiring grad),
  as a reference for the saving;
* one training step of a standalone net, same loss and optimiser: the net of the round's search-weight-step path
  (extracted from the supernet), and a net with the ops of the published ProxylessNAS-Mobile in the search space's
  widths (what a mobile search derives).

On the CPU with one thread a phase's time is this process's CPU time (``time.process_time``), which other processes
on a shared machine barely change; otherwise wall time (after ``torch.cuda.synchronize`` on a GPU). Figures are
means per step: a whole search costs its number of steps times the mean step. The whole search is the schedule of
``configs/imagenet-mobile.yaml`` under ``fidelity: official`` (40 warm-up + 120 search epochs over ImageNet less 50
images per class, an architecture step after every 5th weight step of an epoch, none in the first search epoch),
divided by training each standalone net for the same epochs on the same data; device-hours scale the measured
seconds per image linearly to batch 256.

    .venv/bin/python -m benchmarks.search_cost [--device cpu|cuda] [--batch-size 8] [--rounds 5] [--threads 1]

Prints the figures and writes ``benchmarks/out/search_cost.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from orchestrator.arch import Arch
from orchestrator.latency.model import LatencyModel
from orchestrator.search import arch_step, init_state, load_config, weight_step
from orchestrator.search.objective import regularized_loss
from orchestrator.search.sampling import generator, sample_path
from orchestrator.search.steps import arch_update_due, sample_active
from orchestrator.spaces import get_space

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "search_cost.json"
IMAGENET_TRAIN = 1_281_167
# ProxylessNAS-Mobile's ops (the published net.config), in the search space's widths: what a mobile search derives.
MOBILE_OPS = ("proxyless-imagenet:k5e3.k3e3.zero.zero/k7e3.k3e3.k5e3.k5e3/k7e6.k5e3.k5e3.k5e3/"
              "k5e6.k5e3.k5e3.k5e3/k7e6.k7e6.k7e3.k7e3/k7e6")


def placeholder_latency(space) -> LatencyModel:
    """A cost matrix of ones (zero for ``zero``): a step's time does not depend on the latency values."""
    costs = tuple(tuple((0.0 if op.is_zero else 1.0) if ok else float("nan") for op, ok in zip(space.candidates, row))
                  for row in space.allowed_mask())
    return LatencyModel(space, "placeholder", costs, fixed=10.0, unit="unit")


def plain_arch_step(state, x: torch.Tensor, y: torch.Tensor) -> None:
    """The reference: the two-path gradient as computed before issue 15 (both candidates with autograd, weights
    requiring grad, ``autograd.grad`` on α and the gates); α is not updated, so every round sees the same α."""
    cfg, alpha = state.cfg, state.logits.alpha
    pairs = sample_active(state)
    gates = []
    for p in pairs:
        g = torch.zeros(len(p), device=x.device)
        g[0] = 1.0
        gates.append(g.requires_grad_())
    state.supernet.train()
    out = state.supernet(x, pairs, gates)
    loss = regularized_loss(F.cross_entropy(out, y), state.latency.expected(state.logits.probs()), cfg.target,
                            cfg.arch)
    torch.autograd.grad(loss, [alpha, *gates], allow_unused=True)
    state.arch_step += 1


def schedule(cfg, train_images: int) -> dict:
    """Step counts of a whole search under ``cfg``'s schedule (the driver's own predicate for arch updates)."""
    spe = train_images // cfg.weight.batch_size
    warm = cfg.warmup_epochs * spe
    total = cfg.epochs * spe
    arch = sum(1 for s in range(warm + 1, total + 1) if arch_update_due(cfg, s, spe)) * cfg.arch.update_steps
    return {"steps_per_epoch": spe, "warmup_steps": warm, "search_weight_steps": total - warm, "arch_steps": arch,
            "epochs": cfg.epochs, "weight_batch": cfg.weight.batch_size, "arch_batch": cfg.arch.batch_size}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (one more, untimed, warms up)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (cpu only); on a shared machine 2 threads on 2 cores suffer from other "
                        "processes far more than 1 (seen: 44 s instead of 1.9 s per step)")
    p.add_argument("--config", default=str(ROOT / "configs" / "imagenet-mobile.yaml"),
                   help="the schedule to project (default: the official mobile search)")
    p.add_argument("--fidelity", default="official", help="fidelity preset of the projected schedule")
    p.add_argument("--clock", choices=("cpu", "wall"), default=None,
                   help="what a phase's time is: this process's CPU time (default on CPU with 1 thread: other "
                        "processes on a shared machine then barely disturb it) or wall time (default otherwise)")
    args = p.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cpu":
        torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    space = get_space("proxyless-imagenet")
    b = args.batch_size
    cfg = load_config(args.config, [f"fidelity={args.fidelity}", "arch.grad_mode=two",
                                    f"weight.batch_size={b}", f"arch.batch_size={b}"])
    cfg_v2 = cfg.replace(arch=dataclasses.replace(cfg.arch, grad_mode="full_v2"))
    state = init_state(cfg, placeholder_latency(space), steps_per_epoch=1000)
    state.supernet.to(dev)
    state.logits.to(dev)  # in place: the optimisers keep their parameters
    warm_steps = cfg.warmup_epochs * state.steps_per_epoch
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, 3, 224, 224, generator=gen).to(dev)
    y = torch.randint(0, space.num_classes, (b,), generator=gen).to(dev)

    def train_step(net: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        net.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y, label_smoothing=cfg.weight.label_smoothing).backward()
        opt.step()

    def standalone(arch: Arch) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        net = state.supernet.extract(arch).to(dev)
        w = cfg.weight
        return net, torch.optim.SGD(net.parameters(), lr=w.lr, momentum=w.momentum, nesterov=w.nesterov,
                                    weight_decay=w.weight_decay)

    mobile = standalone(Arch.parse(MOBILE_OPS))
    same_path: dict[str, tuple] = {}

    def weight(step: int):
        def run() -> None:
            state.step = step
            weight_step(state, x, y)
        return run

    def arch(c):
        def run() -> None:
            state.cfg = c
            arch_step(state, x, y)
            state.cfg = cfg
        return run

    names = ["standalone_mobile", "standalone_same_path", "warmup_weight", "search_weight", "arch_two",
             "arch_full_v2", "arch_plain_two"]
    clock = args.clock or ("cpu" if dev.type == "cpu" and args.threads == 1 else "wall")
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    t_start = time.perf_counter()
    for r in range(args.rounds + 1):
        # a new path per round for the weight steps (the arch steps draw new pairs by themselves), and the
        # standalone net of the search weight step's path, trained once untimed so that its optimiser state exists
        path = sample_path(state.logits.probs().detach(), generator(cfg.seed, "path", warm_steps + r))
        same_path["net"] = standalone(space.arch_from_indices(path))
        train_step(*same_path["net"])
        phases = {"standalone_mobile": lambda: train_step(*mobile),
                  "standalone_same_path": lambda: train_step(*same_path["net"]),
                  "warmup_weight": weight(r), "search_weight": weight(warm_steps + r), "arch_two": arch(cfg),
                  "arch_full_v2": arch(cfg_v2), "arch_plain_two": lambda: plain_arch_step(state, x, y)}
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            phases[n]()
            sync()
            if r:
                wall[n].append(time.perf_counter() - t0)
                cpu[n].append(time.process_time() - c0)
        if r:
            print(f"round {r} ({clock} s): " + ", ".join(f"{n} {(cpu if clock == 'cpu' else wall)[n][-1]:.2f}"
                                                   for n in names), flush=True)
    times = cpu if clock == "cpu" else wall
    # Means, not medians: a whole search's cost is the number of steps times the mean cost of a step, and the
    # paths (so the step costs) differ from round to round.
    mean = {n: statistics.fmean(v) for n, v in times.items()}
    vs_weight = {n: mean[n] / mean["search_weight"] for n in names}

    train_images = IMAGENET_TRAIN - cfg.data.holdout_per_class * space.num_classes
    official = load_config(args.config, [f"fidelity={args.fidelity}"])
    sched = schedule(official, train_images)
    wb, ab = sched["weight_batch"] / b, sched["arch_batch"] / b  # per-image scaling of the measured steps
    arch_modes = ("arch_two", "arch_full_v2", "arch_plain_two")

    def search_seconds(arch_phase: str) -> float:
        return (sched["warmup_steps"] * wb * mean["warmup_weight"] + sched["search_weight_steps"] * wb
                * mean["search_weight"] + sched["arch_steps"] * ab * mean[arch_phase])

    train_steps = sched["epochs"] * sched["steps_per_epoch"] * wb
    ratio = {ref: {m: search_seconds(m) / (train_steps * mean[ref]) for m in arch_modes}
             for ref in ("standalone_same_path", "standalone_mobile")}
    hours = {m: search_seconds(m) / 3600 for m in arch_modes}
    hours.update({f"training_{ref}": train_steps * mean[ref] / 3600
                  for ref in ("standalone_same_path", "standalone_mobile")})
    if dev.type == "cuda":
        device = torch.cuda.get_device_name(dev)
    else:
        device = f"{platform.processor() or platform.machine()} CPU, {args.threads} thread(s)"
    out = {"device": device, "batch": b, "rounds": args.rounds, "clock": clock,
           "wall_s": time.perf_counter() - t_start, "mobile_ops": MOBILE_OPS, "seconds_mean": mean,
           "seconds_min": {n: min(v) for n, v in times.items()}, "wall_seconds_all": wall, "cpu_seconds_all": cpu,
           "ratio_to_search_weight_step": vs_weight, "schedule": sched, "fidelity": args.fidelity,
           "config": Path(args.config).name, "search_over_training": ratio, "projected_device_hours": hours,
           "goals": {"arch_two_over_weight_le_1.3": vs_weight["arch_two"] <= 1.3,
                     "search_over_training_same_path_le_1.25": ratio["standalone_same_path"]["arch_two"] <= 1.25}}
    print(f"\n{device}, batch {b}, {args.rounds} rounds, {clock} time, mean per step")
    for n in names:
        print(f"  {n:20s} {mean[n]:7.3f} s   {vs_weight[n]:5.2f}x search weight step")
    print(f"official schedule (fidelity={args.fidelity}): {sched['warmup_steps']} warm-up + "
          f"{sched['search_weight_steps']} search weight steps and {sched['arch_steps']} arch steps at batch "
          f"{sched['weight_batch']}; search / training the derived net for {sched['epochs']} epochs:")
    for m in arch_modes:
        print(f"  {m:15s} {ratio['standalone_same_path'][m]:.3f}x (net of the sampled paths), "
              f"{ratio['standalone_mobile'][m]:.3f}x (ProxylessNAS-Mobile ops), {hours[m]:,.0f} device-hours")
    print(f"  training, same epochs: {hours['training_standalone_same_path']:,.0f} device-hours (sampled paths), "
          f"{hours['training_standalone_mobile']:,.0f} (Mobile ops)")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
