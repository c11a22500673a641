"""Timing on the hardware at hand: table entries, and whole networks timed part by part, round-robin.

Entries: the harness runs warm-up calls, then ``repeats`` timed repeats (``isolated``: the module alone;
``in-network``: each module where it runs inside a whole network, one call per module per pass).

Whole networks (calibration and validation): a group of networks plus a fixed reference network is run
round-robin, one forward pass per network per round in a shuffled order, and every part of a pass (stem, each
block, head) is timed on its own. A network's latency is the sum over its parts of each part's minimum over the
rounds: on a shared host a neighbour slows a whole pass somewhere almost every time, while each short part is
seen undisturbed in some round. The rounds are split in two halves (even and odd) whose estimates give the
measurement's own noise floor; rounds continue until that floor is below ``target_floor`` or ``max_rounds``.
The reference network, timed in every round of every group, tracks how fast the host is at the time.

The C allocator is pinned while measuring (``pin_allocator``): glibc otherwise returns large freed activations
to the system and takes page faults to get them back, which costs as much as the stem itself and depends on the
allocation history, not on the network.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from orchestrator.arch import Arch, Op
from orchestrator.blocks import init_weights
from orchestrator.latency.kit_runner import RUNTIMES
from orchestrator.latency.table import HEAD, STEM, EntryStats, block_key
from orchestrator.network import Block, Head, ProxylessNet, bn_kwargs, make_op, make_stem
from orchestrator.spaces import SearchSpace

log = logging.getLogger(__name__)

STATISTICS = ("median", "min")
# ``in-network`` times each module where it runs in a whole network (caches and predictors as in deployment).
METHODS = ("isolated", "in-network")
# ``cpu`` counts only the time this thread ran, so a neighbour's load does not inflate it (valid for 1 thread).
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ALLOCATORS = ("pinned", "system")
REFERENCE = "reference"  # the key of the reference network in a group's results


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
    allocator: str = "pinned"  # "pinned": no trimming or mmap of freed memory while measuring; "system": as is
    min_rounds: int = 20  # whole networks: at least this many round-robin rounds
    max_rounds: int = 80  # ... and at most this many
    target_floor: float = 0.015  # ... stopping once two halves of the rounds agree to this median relative gap
    # What runs the networks: torch (eager; entries timed part by part) or a deployment runtime (whole networks
    # exported and timed in it, entries fitted: ``latency.fit``), with its execution provider or device.
    runtime: str = "torch"
    provider: str | None = None

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
        if self.allocator not in ALLOCATORS:
            raise ValueError(f"unknown allocator setting {self.allocator!r} (known: {', '.join(ALLOCATORS)})")
        if not 2 <= self.min_rounds <= self.max_rounds:
            raise ValueError(f"need 2 <= min_rounds <= max_rounds, got {self.min_rounds} and {self.max_rounds}")
        if not 0 < self.target_floor < 1:
            raise ValueError(f"target_floor must be in (0, 1), got {self.target_floor}")
        if self.runtime not in ("torch", *RUNTIMES):
            raise ValueError(f"unknown runtime {self.runtime!r} (known: torch, {', '.join(RUNTIMES)})")
        if self.runtime == "torch" and self.provider is not None:
            raise ValueError("--provider names a deployment runtime's execution provider; torch has none")
        if self.runtime != "torch" and (self.dtype != "float32" or self.batch_size != 1):  # as the kit runner
            raise ValueError(f"runtime {self.runtime} times whole float32 networks at batch 1: --dtype and "
                             f"--batch-size do not apply")  # (nor ``method`` and ``repeats``: unused there)

    def space_at_resolution(self, space: SearchSpace) -> SearchSpace:
        """The space whose block shapes this measurement uses (the space itself unless a resolution is given)."""
        return space if self.resolution in (None, space.resolution) else space.variant(resolution=self.resolution)


def default_config(device: str = "cpu", **overrides) -> MeasureConfig:
    """The settings that validate best on ``device`` (see the README's latency benchmark); ``overrides`` that are
    not None win.

    CPU: one thread, the thread's CPU clock, minimum of the repeats, entries timed inside whole networks.
    CUDA: the same with the wall clock (synchronised per part); never run here (no GPU)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    cfg = dict(device=device, threads=None if device.startswith("cuda") else 1, statistic="min",
               method="in-network", warmup=5, repeats=60, min_repeat_ms=0.0)
    cfg.update(given)
    if cfg.get("runtime", "torch") != "torch" and "provider" not in given and cfg["device"].startswith("cuda"):
        cfg["provider"] = {"onnxruntime": "CUDAExecutionProvider", "openvino": "GPU"}.get(cfg["runtime"])
    if "clock" not in given:
        cfg["clock"] = "cpu" if cfg["device"] == "cpu" and cfg["threads"] == 1 else "wall"
    return MeasureConfig(**cfg)


_PINNED: str | None = None


def allocator_state() -> str:
    """How the C allocator is set in this process now (pinning lasts for the process)."""
    return _PINNED or "system"


def pin_allocator() -> str:
    """Keep freed memory in the C heap (glibc: no trimming, no mmap for large blocks) for the rest of the process.

    A network's activations are freed and reallocated on every pass; by default glibc gives large blocks back to
    the system and page-faults them in again, which adds up to half of the stem's time and depends on what ran
    before. Pinned, a pass reuses warm memory as a long-running inference server does. The setting is
    process-wide and stays (memory is not returned to the system until the process ends): measurement processes
    (Ray tasks, ``nas latency``) are short-lived. Returns what was done, for provenance."""
    global _PINNED
    if _PINNED is not None:
        return _PINNED
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        version = libc.gnu_get_libc_version
    except (OSError, AttributeError, TypeError):
        _PINNED = "system (not glibc)"
        return _PINNED
    version.restype = ctypes.c_char_p
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1 and libc.mallopt(m_trim_threshold, 1 << 30) == 1
    _PINNED = f"glibc {version().decode()} mallopt: no mmap, no trim" if ok else "system (mallopt refused)"
    log.info("allocator for measurement: %s", _PINNED)
    return _PINNED


@contextlib.contextmanager
def runtime(cfg: MeasureConfig) -> Iterator[torch.device]:
    """Threads and denormal handling for the duration of a measurement, restored afterwards."""
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {cfg.device!r} asked for, but no CUDA device is visible on this node")
    if cfg.allocator == "pinned":
        pin_allocator()
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


def _parse_block_key(key: str, space: SearchSpace) -> tuple[int, Op]:
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


def head_ms_per_class(space: SearchSpace, cfg: MeasureConfig, device: torch.device) -> float:
    """The classifier's cost per class in ms: the head's linear layer timed at several class counts, least-squares
    slope. It prices the head of a K-class variant of the space from the table's own head; call inside ``runtime``."""
    width = space.widths().head
    dtype = DTYPES[cfg.dtype]
    counts = sorted({10, 100, 1000, 2000, space.num_classes})
    x = torch.randn((cfg.batch_size, width), device=device, dtype=dtype)
    timing = replace(cfg, min_repeat_ms=max(cfg.min_repeat_ms, 1.0), repeats=max(cfg.repeats // 3, 5))
    costs = []
    for k in counts:
        layer = nn.Linear(width, k).to(device=device, dtype=dtype).eval()
        costs.append(float(time_calls(layer, x, timing, device).min()))
    return max(0.0, float(np.polyfit(counts, costs, 1)[0]))


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
    parts = network_parts(net)
    x = torch.randn((cfg.batch_size, shaped.in_channels, shaped.resolution, shaped.resolution),
                    device=device, dtype=dtype)
    samples = time_parts(parts, x, cfg, device)
    wanted = space.candidates[column].encode()
    keep = [k for k, _ in parts if column == 0 or k.endswith(":" + wanted)]
    return {k: summarize(samples[k], cfg.statistic, overhead_ms) for k in keep}


# ---- whole networks, part by part, round-robin -------------------------------------------------------------------
def network_parts(net: ProxylessNet) -> list[tuple[str, nn.Module]]:
    """A network as the parts a table prices, in order: stem, one block per searchable position, head."""
    return [(STEM, net.stem), *((block_key(i, op), b) for i, (b, op) in enumerate(zip(net.blocks, net.arch.ops))),
            (HEAD, net.head)]


def reference_arch(space: SearchSpace) -> Arch:
    """The fixed network timed in every group: the middle kernel at the smallest expansion on every block."""
    kernels, expands = sorted(space.kernels), sorted(space.expands)
    op = Op(kernels[len(kernels) // 2], expands[0])
    return space.arch_from_indices([space.candidate_index(op)] * space.num_blocks)


@dataclass(frozen=True)
class NetworkTiming:
    """One network timed part by part in a group of round-robin passes."""

    arch: str
    parts_ms: dict[str, float]  # each part's minimum over the rounds, by table key
    latency_ms: float  # the network's latency: the sum of its parts' minima
    halves_ms: tuple[float, float]  # the same estimate from the even rounds and from the odd rounds
    whole_min_ms: float  # the fastest single pass (the sum of one pass's parts)
    whole_halves_ms: tuple[float, float]  # the fastest pass among the even rounds and among the odd rounds


@dataclass(frozen=True)
class GroupTiming:
    """A group of networks and the reference network, timed in the same rounds."""

    networks: tuple[NetworkTiming, ...]
    reference: NetworkTiming
    rounds: int
    noise_floor: float  # median relative gap between the two halves' estimates, over the group's networks


def halves_gap(samples: np.ndarray) -> np.ndarray:
    """Per network, |even/odd - 1| of the sum of part minima, from samples of shape (rounds, networks, parts)."""
    even = samples[0::2].min(axis=0).sum(axis=-1)
    odd = samples[1::2].min(axis=0).sum(axis=-1)
    return np.abs(even / odd - 1.0)


def time_network_group(space: SearchSpace, archs: list[Arch], cfg: MeasureConfig, seed: int = 0) -> GroupTiming:
    """Time ``archs`` and the reference network round-robin, part by part; call inside ``runtime(cfg)``.

    Every round runs each network once in a fresh shuffled order (seeded), so no network always follows the
    same one. Rounds go on in steps of 5 from ``cfg.min_rounds`` until the halves agree to ``cfg.target_floor``
    (median over the group) or ``cfg.max_rounds`` is reached."""
    device = torch.device(cfg.device)
    dtype = DTYPES[cfg.dtype]
    shaped = cfg.space_at_resolution(space)
    everyone = [reference_arch(space), *archs]
    nets = [ProxylessNet(a, space).to(device=device, dtype=dtype).eval() for a in everyone]
    parts = [network_parts(n) for n in nets]
    x = torch.randn((cfg.batch_size, shaped.in_channels, shaped.resolution, shaped.resolution),
                    device=device, dtype=dtype)
    sync = _sync(device)
    clock = CLOCKS[cfg.clock]
    rng = random.Random(seed)
    order = list(range(len(nets)))
    for _ in range(max(1, min(cfg.warmup, 3))):
        for net in nets:
            net(x)
    samples = np.empty((cfg.max_rounds, len(nets), len(parts[0])))
    rounds = 0
    while rounds < cfg.max_rounds:
        rng.shuffle(order)
        for i in order:
            h = x
            row = samples[rounds, i]
            for m, (_, module) in enumerate(parts[i]):
                sync()
                t0 = clock()
                h = module(h)
                sync()
                row[m] = clock() - t0
        rounds += 1
        if rounds >= cfg.min_rounds and (rounds - cfg.min_rounds) % 5 == 0:
            if float(np.median(halves_gap(samples[:rounds]))) <= cfg.target_floor:
                break
    ms = samples[:rounds] * 1e3
    gaps = halves_gap(ms)
    even, odd = ms[0::2].min(axis=0).sum(axis=-1), ms[1::2].min(axis=0).sum(axis=-1)
    minima = ms.min(axis=0)
    passes = ms.sum(axis=-1)
    whole, whole_even, whole_odd = passes.min(axis=0), passes[0::2].min(axis=0), passes[1::2].min(axis=0)
    timings = [NetworkTiming(a.encode(), {k: float(v) for (k, _), v in zip(p, minima[i])}, float(minima[i].sum()),
                             (float(even[i]), float(odd[i])), float(whole[i]),
                             (float(whole_even[i]), float(whole_odd[i])))
               for i, (a, p) in enumerate(zip(everyone, parts))]
    return GroupTiming(tuple(timings[1:]), timings[0], rounds, float(np.median(gaps)))
