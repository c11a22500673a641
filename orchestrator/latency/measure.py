"""Timing on the hardware at hand: every table entry and every whole network go through the same harness.

The harness runs warm-up calls, then ``repeats`` timed repeats; each repeat times enough back-to-back calls to
last at least ``min_repeat_ms`` (so the clock's resolution and the loop's own cost vanish) and records the
mean time per call. The entry keeps the median of the repeats, which is robust to a busy neighbour, and the
spread. Entries are timed as the modules the network runs (a block includes its shortcut add), so the sum of
entries predicts the whole network timed by the same harness.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from orchestrator.arch import Arch
from orchestrator.blocks import init_weights
from orchestrator.latency.table import HEAD, STEM, EntryStats, block_key
from orchestrator.network import Block, Head, ProxylessNet, bn_kwargs, make_op, make_stem
from orchestrator.spaces import SearchSpace

STATISTICS = ("median", "min")
# ``in-network`` times each module where it runs in a whole network (caches and predictors as in deployment).
METHODS = ("isolated", "in-network")
# ``cpu`` counts only the time this thread ran, so a neighbour's load does not inflate it (valid for 1 thread).
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class MeasureConfig:
    """How to time: batch, threads (CPU), dtype, device, warm-up calls, timed repeats, least time per repeat."""

    batch_size: int = 1
    threads: int | None = 1
    dtype: str = "float32"
    device: str = "cpu"
    warmup: int = 10
    repeats: int = 30
    min_repeat_ms: float = 2.0
    resolution: int | None = None  # input side; default the space's
    statistic: str = "median"  # which per-repeat statistic an entry's latency is
    clock: str = "wall"  # wall time, or this thread's CPU time (single-threaded CPU runs on a shared host)
    method: str = "isolated"  # time each entry's module alone, or "in-network": inside a running network

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r} (known: {', '.join(DTYPES)})")
        if self.warmup < 0 or self.repeats < 3:
            raise ValueError(f"need warmup >= 0 and repeats >= 3, got {self.warmup} and {self.repeats}")
        if self.min_repeat_ms < 0:
            raise ValueError(f"min_repeat_ms must be non-negative, got {self.min_repeat_ms}")
        if self.statistic not in STATISTICS:
            raise ValueError(f"unknown statistic {self.statistic!r} (known: {', '.join(STATISTICS)})")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"unknown device {self.device!r}: expected cpu, cuda or cuda:N")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r} (known: {', '.join(METHODS)})")
        if self.clock not in CLOCKS:
            raise ValueError(f"unknown clock {self.clock!r} (known: {', '.join(CLOCKS)})")
        if self.clock == "cpu" and (self.device != "cpu" or self.threads != 1):
            raise ValueError("the cpu clock measures one thread's CPU time: use it only with --device cpu --threads 1")

    def space_at_resolution(self, space: SearchSpace) -> SearchSpace:
        """The space whose block shapes this measurement uses (the space itself unless a resolution is given)."""
        return space if self.resolution in (None, space.resolution) else replace(space, resolution=self.resolution)


@contextlib.contextmanager
def runtime(cfg: MeasureConfig) -> Iterator[torch.device]:
    """Threads and denormal handling for the duration of a measurement, restored afterwards."""
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {cfg.device!r} asked for, but no CUDA device is visible on this node")
    old_threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    torch.set_flush_denormal(True)
    try:
        with torch.inference_mode():
            yield device
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(old_threads)


def _sync(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def time_calls(fn: Callable[[torch.Tensor], object], x: torch.Tensor, cfg: MeasureConfig,
               device: torch.device) -> np.ndarray:
    """Per-call times in ms, one per repeat (each repeat the mean over enough calls to last ``min_repeat_ms``)."""
    sync = _sync(device)
    clock = CLOCKS[cfg.clock]
    for _ in range(cfg.warmup):
        fn(x)
    sync()
    t0 = clock()
    fn(x)
    sync()
    single = max(clock() - t0, 1e-7)
    inner = max(1, min(100_000, math.ceil(cfg.min_repeat_ms / 1e3 / single)))
    out = np.empty(cfg.repeats)
    for r in range(cfg.repeats):
        sync()
        t0 = clock()
        for _ in range(inner):
            fn(x)
        sync()
        out[r] = (clock() - t0) / inner * 1e3
    return out


def summarize(samples_ms: np.ndarray, statistic: str = "median", overhead_ms: float = 0.0) -> EntryStats:
    """Median and spread of per-call times; ``latency_ms`` is ``statistic`` less the harness's own per-call cost."""
    q1, med, q3 = np.percentile(samples_ms, [25, 50, 75])
    value = float(med) if statistic == "median" else float(samples_ms.min())
    return EntryStats(
        latency_ms=max(0.0, value - overhead_ms), count=len(samples_ms), median_ms=float(med),
        mean_ms=float(samples_ms.mean()), std_ms=float(samples_ms.std(ddof=1)), q1_ms=float(q1), q3_ms=float(q3),
        min_ms=float(samples_ms.min()), max_ms=float(samples_ms.max()),
    )


def harness_overhead(cfg: MeasureConfig, device: torch.device) -> float:
    """The harness's cost per call of a module that does nothing, in ms: subtracted per entry, added once."""
    x = torch.zeros(1, device=device)
    return float(np.median(time_calls(nn.Identity(), x, cfg, device)))


def entry_keys(space: SearchSpace) -> list[str]:
    """Every key a measured table of ``space`` holds, zero entries included, in network order."""
    keys = [STEM]
    for spec in space.blocks():
        keys += [block_key(spec.index, op) for op in space.candidates if not op.is_zero or spec.zero_ok]
    return keys + [HEAD]


def entry_module(space: SearchSpace, key: str) -> tuple[nn.Module, tuple[int, ...]]:
    """The module an entry times and its input shape at batch 1, as the standalone network builds them."""
    widths = space.widths()
    specs = space.blocks()
    if key == STEM:
        module: nn.Module = make_stem(space, widths)
        shape = (space.in_channels, space.resolution, space.resolution)
    elif key == HEAD:
        last = specs[-1]
        module = Head(widths.stages[-1], widths.head, space.num_classes, space.dropout, bn_kwargs(space))
        shape = (last.out_channels, last.out_resolution, last.out_resolution)
    else:
        index, op = _parse_block_key(key, space)
        spec = specs[index]
        module = Block(make_op(spec, op, space), spec.has_shortcut)
        shape = (spec.in_channels, spec.in_resolution, spec.in_resolution)
    init_weights(module)
    return module, shape


def _parse_block_key(key: str, space: SearchSpace):
    from orchestrator.arch import Op

    head, _, token = key.partition(":")
    if not (head.startswith("b") and head[1:].isdigit() and token):
        raise ValueError(f"malformed table key {key!r}: expected 'stem', 'head' or 'bNN:OP' such as 'b03:k5e6'")
    index = int(head[1:])
    if index >= space.num_blocks:
        raise ValueError(f"table key {key!r}: space {space.name!r} has only {space.num_blocks} blocks")
    return index, Op.parse(token)


def measure_entries(space: SearchSpace, keys: list[str], cfg: MeasureConfig,
                    overhead_ms: float = 0.0) -> dict[str, EntryStats]:
    """Time the modules of ``keys`` at their real input shapes; call inside ``runtime(cfg)``."""
    device = torch.device(cfg.device)
    dtype = DTYPES[cfg.dtype]
    shaped = cfg.space_at_resolution(space)
    out = {}
    for key in keys:
        module, shape = entry_module(shaped, key)
        module = module.to(device=device, dtype=dtype).eval()
        x = torch.randn((cfg.batch_size, *shape), device=device, dtype=dtype)
        out[key] = summarize(time_calls(module, x, cfg, device), cfg.statistic, overhead_ms)
    return out


def measure_arch(arch: Arch, space: SearchSpace, cfg: MeasureConfig) -> EntryStats:
    """Time the whole standalone network of ``arch`` end to end with the same harness; call inside ``runtime``."""
    device = torch.device(cfg.device)
    dtype = DTYPES[cfg.dtype]
    shaped = cfg.space_at_resolution(space)
    net = ProxylessNet(arch, space).to(device=device, dtype=dtype).eval()
    x = torch.randn((cfg.batch_size, shaped.in_channels, shaped.resolution, shaped.resolution),
                    device=device, dtype=dtype)
    return summarize(time_calls(net, x, cfg, device), cfg.statistic)


def cover_arch(space: SearchSpace, column: int) -> Arch:
    """The architecture with candidate ``column`` on every block that allows it (candidate 0 elsewhere)."""
    return space.arch_from_indices([column if row[column] else 0 for row in space.allowed_mask()])


def time_parts(parts: list[tuple[str, nn.Module]], x: torch.Tensor, cfg: MeasureConfig,
               device: torch.device) -> dict[str, np.ndarray]:
    """Per-part times in ms of ``repeats`` forward passes through ``parts`` in sequence, one call each."""
    sync = _sync(device)
    clock = CLOCKS[cfg.clock]
    out = {k: np.empty(cfg.repeats) for k, _ in parts}
    for r in range(-cfg.warmup, cfg.repeats):
        h = x
        for key, module in parts:
            sync()
            t0 = clock()
            h = module(h)
            sync()
            if r >= 0:
                out[key][r] = (clock() - t0) * 1e3
    return out


def measure_in_network(space: SearchSpace, column: int, cfg: MeasureConfig,
                       overhead_ms: float = 0.0) -> dict[str, EntryStats]:
    """Entries of candidate ``column`` (and, for column 0, stem and head) timed inside its cover network."""
    device = torch.device(cfg.device)
    dtype = DTYPES[cfg.dtype]
    shaped = cfg.space_at_resolution(space)
    arch = cover_arch(space, column)
    net = ProxylessNet(arch, space).to(device=device, dtype=dtype).eval()
    parts = [(STEM, net.stem), *((block_key(i, op), b) for i, (b, op) in enumerate(zip(net.blocks, arch.ops))),
             (HEAD, net.head)]
    x = torch.randn((cfg.batch_size, shaped.in_channels, shaped.resolution, shaped.resolution),
                    device=device, dtype=dtype)
    samples = time_parts(parts, x, cfg, device)
    wanted = space.candidates[column].encode()
    keep = [k for k, _ in parts if column == 0 or k.endswith(":" + wanted)]
    return {k: summarize(samples[k], cfg.statistic, overhead_ms) for k in keep}
