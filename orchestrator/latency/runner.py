"""Building and validating measured tables, in this process or as Ray tasks on the node that has the hardware.

Work is split into chunks (stem and head; one block position with all its candidates; a few whole networks).
On Ray each chunk is a task that asks for one unit of the hardware's custom resource (``hw:<name>``), so chunks
run only on a node with that hardware and one at a time there (measurements would disturb each other), while
different hardware runs in parallel. The driver shows progress as chunks finish.
"""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from tqdm import tqdm

from orchestrator.arch import Arch
from orchestrator.latency.hardware import HardwareProfile, device_name
from orchestrator.latency.measure import (
    MeasureConfig,
    entry_keys,
    harness_overhead,
    measure_arch,
    measure_entries,
    measure_in_network,
    runtime,
)
from orchestrator.latency.table import HEAD, STEM, EntryStats, LatencyTable, Provenance, utc_now
from orchestrator.spaces import SearchSpace, get_space

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeInfo:
    """What a chunk learned about the node it ran on."""

    device_name: str
    torch_version: str
    cuda_version: str | None
    node_id: str | None
    hostname: str
    overhead_ms: float


@dataclass(frozen=True)
class ChunkResult:
    entries: dict[str, EntryStats]
    node: NodeInfo


def _node_info(cfg: MeasureConfig, overhead_ms: float) -> NodeInfo:
    import torch

    node_id = None
    try:
        import ray

        if ray.is_initialized():
            node_id = ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return NodeInfo(device_name(cfg.device), torch.__version__, torch.version.cuda, node_id, socket.gethostname(),
                    overhead_ms)


def measure_chunk(space_name: str, keys: list[str], cfg: MeasureConfig) -> ChunkResult:
    """Node side of a build: time ``keys`` of the space on this node's ``cfg.device``."""
    space = get_space(space_name)
    with runtime(cfg) as device:
        overhead = harness_overhead(cfg, device)
        entries = measure_entries(space, keys, cfg, overhead)
    return ChunkResult(entries, _node_info(cfg, overhead))


def measure_network_chunk(space_name: str, column: int, cfg: MeasureConfig) -> ChunkResult:
    """Node side of an in-network build: time candidate ``column``'s entries inside its cover network."""
    space = get_space(space_name)
    with runtime(cfg) as device:
        overhead = harness_overhead(replace(cfg, min_repeat_ms=0.0), device)
        entries = measure_in_network(space, column, cfg, overhead)
    return ChunkResult(entries, _node_info(cfg, overhead))


def measure_archs_chunk(space_name: str, archs: list[str], cfg: MeasureConfig) -> ChunkResult:
    """Node side of a validation: time whole networks, keyed by their architecture strings."""
    space = get_space(space_name)
    with runtime(cfg):
        entries = {a: measure_arch(space.parse(a), space, cfg) for a in archs}
    return ChunkResult(entries, _node_info(cfg, 0.0))


def build_chunks(space: SearchSpace) -> list[list[str]]:
    """Stem and head together, then one chunk per block position (all its candidates)."""
    keys = entry_keys(space)
    chunks: dict[str, list[str]] = {}
    for k in keys:
        chunks.setdefault(STEM if k in (STEM, HEAD) else k.split(":")[0], []).append(k)
    return list(chunks.values())


# ---- executors --------------------------------------------------------------------------------------------------
Job = tuple[Callable[..., ChunkResult], tuple, int]  # function, args, progress units


def run_local(jobs: Sequence[Job], desc: str) -> list[ChunkResult]:
    """Run chunks here, one after the other, with a progress bar."""
    out = []
    with tqdm(total=sum(j[2] for j in jobs), desc=desc, unit="entry", disable=None) as bar:
        for fn, args, n in jobs:
            out.append(fn(*args))
            bar.update(n)
    return out


def run_ray(jobs: Sequence[Job], profile: HardwareProfile, cfg: MeasureConfig, desc: str) -> list[ChunkResult]:
    """Run chunks as Ray tasks on nodes offering ``profile``'s resource; progress as they finish."""
    import ray

    if ray.cluster_resources().get(profile.resource, 0) <= 0:
        raise ValueError(f"no node in the Ray cluster offers hardware {profile.name!r} "
                         f"(resource {profile.resource!r}); start one with --resources '{{\"{profile.resource}\": 1}}'")
    opts = dict(resources={profile.resource: 1}, num_cpus=cfg.threads or 1, num_gpus=1 if profile.kind == "cuda" else 0,
                max_retries=0)
    remotes = {fn: ray.remote(fn).options(**opts) for fn in {j[0] for j in jobs}}
    refs = [remotes[fn].remote(*args) for fn, args, _ in jobs]
    units = {ref: n for ref, (_, _, n) in zip(refs, jobs)}
    pending = list(refs)
    with tqdm(total=sum(units.values()), desc=desc, unit="entry", disable=None) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            bar.update(units[done[0]])
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        cause = e.cause if isinstance(e.cause, Exception) else e
        raise ValueError(f"{profile.name}: {str(cause).splitlines()[0]}") from None


# ---- build ------------------------------------------------------------------------------------------------------
def build_table(space: SearchSpace, profile: HardwareProfile, cfg: MeasureConfig, use_ray: bool) -> LatencyTable:
    """Measure every entry of ``space`` on ``profile``'s hardware and return the table with its provenance."""
    if not profile.measured:
        raise ValueError(f"hardware {profile.name!r} is {profile.kind}, not measured: nothing to build")
    if (profile.kind == "cuda") != cfg.device.startswith("cuda"):
        raise ValueError(f"hardware {profile.name!r} is {profile.kind} but --device is {cfg.device!r}")
    if cfg.method == "in-network":
        jobs = [(measure_network_chunk, (space.name, c, cfg), space.num_blocks) for c in range(len(space.candidates))]
    else:
        jobs = [(measure_chunk, (space.name, keys, cfg), len(keys)) for keys in build_chunks(space)]
    desc = f"build {profile.name}"
    results = run_ray(jobs, profile, cfg, desc) if use_ray else run_local(jobs, desc)
    entries: dict[str, EntryStats] = {}
    for r in results:
        entries.update(r.entries)
    node = results[0].node
    prov = Provenance(
        hardware=profile.name, hardware_kind=profile.kind, space=space.name, space_fingerprint=space.fingerprint(),
        resolution=cfg.resolution or space.resolution, batch_size=cfg.batch_size, dtype=cfg.dtype,
        threads=cfg.threads, device=cfg.device, device_name=node.device_name, torch_version=node.torch_version,
        cuda_version=node.cuda_version, created=utc_now(),
        warmup=cfg.warmup, repeats=cfg.repeats, min_repeat_ms=cfg.min_repeat_ms, statistic=cfg.statistic,
        clock=cfg.clock, method=cfg.method, source="measured",
        call_overhead_ms=float(np.median([r.node.overhead_ms for r in results])),
        node_id=",".join(sorted({r.node.node_id for r in results if r.node.node_id})) or None,
        hostname=",".join(sorted({r.node.hostname for r in results})),
    )
    return LatencyTable(prov, dict(sorted(entries.items(), key=lambda kv: _order(space)[kv[0]])))


def build_tables(space: SearchSpace, jobs: Sequence[tuple[HardwareProfile, MeasureConfig]],
                 use_ray: bool) -> list[LatencyTable]:
    """Build one table per (profile, config); on Ray the different hardware is measured at the same time."""
    if not use_ray or len(jobs) == 1:
        return [build_table(space, p, cfg, use_ray) for p, cfg in jobs]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(lambda job: build_table(space, job[0], job[1], True), jobs))


def _order(space: SearchSpace) -> dict[str, int]:
    return {k: i for i, k in enumerate(entry_keys(space))}


def config_of(table: LatencyTable) -> MeasureConfig:
    """The measurement settings a table was built with, to time whole networks the same way."""
    p = table.provenance
    if p.source != "measured":
        raise ValueError(f"table {p.hardware!r} was imported ({p.source}); it can only be validated on its hardware")
    return MeasureConfig(batch_size=p.batch_size, threads=p.threads, dtype=p.dtype, device=p.device,
                         warmup=p.warmup or 0, repeats=p.repeats or 3, min_repeat_ms=p.min_repeat_ms or 0.0,
                         resolution=p.resolution, statistic=p.statistic, clock=p.clock,
                         method=p.method)


# ---- validation -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Validation:
    """Table predictions against end-to-end measurements of random architectures."""

    hardware: str
    space: str
    samples: int
    mape: float
    spearman: float
    within_10pct: float
    mean_error: float
    archs: tuple[str, ...]
    predicted_ms: tuple[float, ...]
    measured_ms: tuple[float, ...]

    def to_dict(self, details: bool = True) -> dict:
        d = asdict(self)
        if not details:
            for k in ("archs", "predicted_ms", "measured_ms"):
                d.pop(k)
        return d


def compare(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """MAPE, Spearman rank correlation, share within ±10% and mean signed error of predictions."""
    from scipy.stats import spearmanr

    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    if len(p) < 3 or len(p) != len(m):
        raise ValueError(f"need at least 3 paired samples to compare, got {len(p)} and {len(m)}")
    rel = (p - m) / m
    return {"mape": float(np.abs(rel).mean()), "spearman": float(spearmanr(p, m).statistic),
            "within_10pct": float((np.abs(rel) <= 0.10).mean()), "mean_error": float(rel.mean())}


def sample_archs(space: SearchSpace, n: int, seed: int) -> list[Arch]:
    if n < 3:
        raise ValueError(f"validation needs at least 3 samples, got {n}")
    rng = random.Random(seed)
    return [space.random_arch(rng) for _ in range(n)]


def validate_table(table: LatencyTable, samples: int, seed: int, use_ray: bool, chunk: int = 5) -> Validation:
    """Measure ``samples`` random architectures end to end on the table's hardware and score its predictions."""
    space = table.space()
    model = table.to_model(space)
    cfg = config_of(table)
    profile = HardwareProfile(table.provenance.hardware, table.provenance.hardware_kind)
    archs = [a.encode() for a in sample_archs(space, samples, seed)]
    jobs = [(measure_archs_chunk, (space.name, archs[i:i + chunk], cfg), len(archs[i:i + chunk]))
            for i in range(0, len(archs), chunk)]
    desc = f"validate {profile.name}"
    results = run_ray(jobs, profile, cfg, desc) if use_ray else run_local(jobs, desc)
    measured = {k: v.latency_ms for r in results for k, v in r.entries.items()}
    predicted = [model.exact(space.parse(a)) for a in archs]
    stats = compare(predicted, [measured[a] for a in archs])
    return Validation(profile.name, space.name, samples, archs=tuple(archs), predicted_ms=tuple(predicted),
                      measured_ms=tuple(measured[a] for a in archs), **stats)
