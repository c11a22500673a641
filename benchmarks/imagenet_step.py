"""Benchmark: seconds per supernet weight step of the ImageNet space, and the search cost it implies.

Runs the real ``proxyless-imagenet`` supernet (one sampled path per step, SGD) at 224 px on the device at hand
(CUDA if present, else this CPU) and projects a full search: the official schedule (40 warm-up + 120 search
epochs over ImageNet's train set less 50 held-out images per class, an architecture step every 5 weight steps,
each about as costly as a weight step of two paths). The projection's only measured input is the step time.

    .venv/bin/python -m benchmarks.imagenet_step [--batch 16] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from orchestrator.spaces import get_space
from orchestrator.supernet import Supernet

OUT = Path(__file__).parent / "out" / "imagenet_step.json"
TRAIN_IMAGES = 1_281_167 - 50 * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    space = get_space("proxyless-imagenet")
    net = Supernet(space).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    rng = random.Random(0)
    x = torch.randn(args.batch, 3, 224, 224, device=dev)
    y = torch.randint(0, 1000, (args.batch,), device=dev)
    times = []
    for i in range(args.steps + 1):
        path = space.indices(space.random_arch(rng))
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x, path), y).backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step pays for allocation
            times.append(time.perf_counter() - t0)
    step_s = sorted(times)[len(times) // 2]
    per_image = step_s / args.batch
    weight_epochs, search_epochs, arch_every = 40 + 120, 120, 5
    images = weight_epochs * TRAIN_IMAGES + search_epochs * TRAIN_IMAGES / arch_every * 2
    hours = images * per_image / 3600
    device = torch.cuda.get_device_name() if dev.type == "cuda" else f"{platform.processor() or platform.machine()} CPU, {args.threads} threads"
    out = {"device": device, "batch": args.batch, "median_step_s": step_s, "seconds_per_image": per_image,
           "projected_device_hours_full_search": hours, "steps_timed": len(times)}
    print(f"{device}: {step_s:.3f} s per weight step at batch {args.batch} ({1000 * per_image:.1f} ms/image)")
    print(f"projected full ImageNet search (160 epochs of weight steps + architecture steps): {hours:,.0f} device-hours")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
