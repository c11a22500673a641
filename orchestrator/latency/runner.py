"""Building and validating measured tables, in this process or as Ray tasks on the node that has the hardware.

A build is one command per hardware: the plain entries (one chunk per candidate column, or per block position
when isolated), then groups of whole calibration networks and of held-out validation networks, all timed on the
hardware; the driver fits the calibrated entries and scores them. On Ray each chunk is a task that asks for one
unit of the hardware's custom resource (``hw:<name>``), so chunks run only on a node with that hardware and one
at a time there (measurements would disturb each other), while different hardware runs in parallel. Without Ray
(``use_ray=False``) the same chunks run in this process. The driver shows progress as chunks finish.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from orchestrator.arch import Arch
from orchestrator.latency import calibrate, kit_runner
from orchestrator.latency.calibrate import CalibrationConfig, compare  # noqa: F401  (compare: re-exported)
from orchestrator.latency.fit import fit_whole_networks, score_networks
from orchestrator.latency.hardware import DEVICE, HardwareProfile, device_name, known_hardware
from orchestrator.latency.kit import export_network, kit_archs
from orchestrator.latency.measure import (
    REFERENCE,
    GroupTiming,
    MeasureConfig,
    allocator_state,
    entry_keys,
    harness_overhead,
    head_ms_per_class,
    measure_entries,
    measure_in_network,
    pin_allocator,
    reference_arch,
    runtime,
    time_network_group,
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
    allocator: str = "system"
    runtime_version: str | None = None  # the deployment runtime's version (None: torch)


@dataclass(frozen=True)
class ChunkResult:
    entries: dict[str, EntryStats]
    node: NodeInfo
    group: GroupTiming | None = None  # whole networks timed part by part (calibration, validation)
    head_ms_per_class: float | None = None
    whole: dict[str, dict] | None = None  # whole networks timed in a deployment runtime: arch -> ms, halves, rounds


def _node_info(cfg: MeasureConfig, overhead_ms: float) -> NodeInfo:
    node_id = None
    try:
        import ray

        if ray.is_initialized():
            node_id = ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    allocator = pin_allocator() if cfg.allocator == "pinned" else allocator_state()
    version = kit_runner.runtime_version(cfg.runtime) if cfg.runtime != "torch" else None
    return NodeInfo(device_name(cfg.device), torch.__version__, torch.version.cuda, node_id, socket.gethostname(),
                    overhead_ms, allocator, version)


def measure_chunk(space_name: str, keys: list[str], cfg: MeasureConfig) -> ChunkResult:
    """Node side of an isolated build: time ``keys`` of the space on this node's ``cfg.device``."""
    space = get_space(space_name)
    with runtime(cfg) as device:
        overhead = harness_overhead(cfg, device)
        entries = measure_entries(space, keys, cfg, overhead)
        per_class = head_ms_per_class(space, cfg, device) if HEAD in keys else None
    return ChunkResult(entries, _node_info(cfg, overhead), head_ms_per_class=per_class)


def measure_network_chunk(space_name: str, column: int, cfg: MeasureConfig) -> ChunkResult:
    """Node side of an in-network build: time candidate ``column``'s entries inside its cover network."""
    space = get_space(space_name)
    with runtime(cfg) as device:
        overhead = harness_overhead(replace(cfg, min_repeat_ms=0.0), device)
        entries = measure_in_network(space, column, cfg, overhead)
        per_class = head_ms_per_class(space, cfg, device) if column == 0 else None
    return ChunkResult(entries, _node_info(cfg, overhead), head_ms_per_class=per_class)


def measure_group_chunk(space_name: str, archs: list[str], cfg: MeasureConfig, seed: int = 0) -> ChunkResult:
    """Node side of calibration and validation: time whole networks and the reference round-robin, part by part."""
    space = get_space(space_name)
    with runtime(cfg):
        group = time_network_group(space, [space.parse(a) for a in archs], cfg, seed)
    return ChunkResult(_group_entries(group), _node_info(cfg, 0.0), group=group)


def measure_archs_chunk(space_name: str, archs: list[str], cfg: MeasureConfig) -> ChunkResult:
    """Time whole networks, keyed by their architecture strings, as validation times them (with the reference
    network, under the key ``reference``, to compare hosts or times)."""
    return measure_group_chunk(space_name, archs, cfg)


def measure_runtime_chunk(space_name: str, archs: list[str], cfg: MeasureConfig, seed: int = 0) -> ChunkResult:
    """Node side of a deployment-runtime build, validation or measurement: export the whole networks (and the
    reference network, under the key ``reference``) in the format ``cfg.runtime`` reads, and time them there
    round-robin (``kit_runner.time_networks``, the code a kit's runner runs on a device)."""
    space = get_space(space_name)
    fmt = kit_runner.FORMATS[cfg.runtime]
    named = [(REFERENCE, reference_arch(space)), *((a, space.parse(a)) for a in archs)]
    kit_runner.runtime_version(cfg.runtime)  # a missing runtime fails before any export
    with tempfile.TemporaryDirectory(prefix="nas-latency-") as folder:
        paths = [Path(folder) / f"{i:03d}.{fmt}" for i in range(len(named))]
        for (_, arch), path in zip(named, paths):
            export_network(arch, path, fmt)
        timings = kit_runner.time_networks(paths, cfg.runtime, cfg.threads, cfg.provider, cfg.clock,
                                           cfg.min_rounds, cfg.max_rounds, cfg.target_floor,
                                           group_size=len(paths), warmup=max(1, min(cfg.warmup, 3)), seed=seed)
    whole = {key: timings[str(path)] for (key, _), path in zip(named, paths)}
    entries = {k: EntryStats(latency_ms=t["ms"], count=t["rounds"], min_ms=t["ms"]) for k, t in whole.items()}
    return ChunkResult(entries, _node_info(cfg, 0.0), whole=whole)


def _group_entries(group: GroupTiming) -> dict[str, EntryStats]:
    def stats(t) -> EntryStats:
        return EntryStats(latency_ms=t.latency_ms, count=group.rounds, min_ms=t.whole_min_ms)

    return {**{t.arch: stats(t) for t in group.networks}, REFERENCE: stats(group.reference)}


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
    from tqdm import tqdm  # optional: importing this module needs no tqdm

    out = []
    with tqdm(total=sum(j[2] for j in jobs), desc=desc, unit="entry", disable=None) as bar:
        for fn, args, n in jobs:
            out.append(fn(*args))
            bar.update(n)
    return out


def run_ray(jobs: Sequence[Job], profile: HardwareProfile, cfg: MeasureConfig, desc: str) -> list[ChunkResult]:
    """Run chunks as Ray tasks on nodes offering ``profile``'s resource; progress as they finish."""
    import ray
    from tqdm import tqdm

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
def _group_jobs(space: SearchSpace, archs: list[Arch], cfg: MeasureConfig, size: int, seed: int) -> list[Job]:
    return [(measure_group_chunk, (space.name, [a.encode() for a in g], cfg, seed + i), len(g) + 1)
            for i, g in enumerate(calibrate.groups_of(archs, size))]


def build_table(space: SearchSpace, profile: HardwareProfile, cfg: MeasureConfig, use_ray: bool,
                calibration: CalibrationConfig | None = CalibrationConfig()) -> LatencyTable:
    """Measure every entry of ``space`` on ``profile``'s hardware, calibrate and validate on whole networks there
    (``calibration``, by default 60 and 30 networks; None: a plain table, still with its reference network's
    latency), and return the table."""
    if profile.kind == DEVICE:
        raise ValueError(f"unknown hardware {profile.name!r} for a build (known: {known_hardware()}): a build "
                         f"measures a cluster node; a device outside the cluster is measured with a kit "
                         f"(nas latency kit)")
    if not profile.measured:
        raise ValueError(f"hardware {profile.name!r} is {profile.kind}, not measured: nothing to build")
    if (profile.kind == "cuda") != cfg.device.startswith("cuda"):
        raise ValueError(f"hardware {profile.name!r} is {profile.kind} but --device is {cfg.device!r}")
    space = cfg.space_at_resolution(space)
    cfg = replace(cfg, resolution=None)
    if cfg.runtime != "torch":
        return build_runtime_table(space, profile, cfg, use_ray, calibration)
    cal = calibration or CalibrationConfig(networks=0, validate=0)
    if cfg.method == "in-network":
        plain_jobs = [(measure_network_chunk, (space.name, c, cfg), space.num_blocks)
                      for c in range(len(space.candidates))]
    else:
        plain_jobs = [(measure_chunk, (space.name, keys, cfg), len(keys)) for keys in build_chunks(space)]
    cal_archs = calibrate.spread_archs(space, cal.networks, cal.seed, calibrate.CALIBRATION)
    val_archs = calibrate.spread_archs(space, cal.validate, cal.validation_seed, calibrate.VALIDATION,
                                       exclude=[a.encode() for a in cal_archs])
    cal_jobs = _group_jobs(space, cal_archs, cfg, cal.group_size, 0) or [(measure_group_chunk,
                                                                          (space.name, [], cfg, 0), 1)]
    val_jobs = _group_jobs(space, val_archs, cfg, cal.group_size, 1000)
    jobs = plain_jobs + cal_jobs + val_jobs
    desc = f"build {profile.name}"
    results = run_ray(jobs, profile, cfg, desc) if use_ray else run_local(jobs, desc)
    plain_res = results[:len(plain_jobs)]
    cal_groups = [r.group for r in results[len(plain_jobs):len(plain_jobs) + len(cal_jobs)]]
    val_groups = [r.group for r in results[len(plain_jobs) + len(cal_jobs):]]
    plain: dict[str, EntryStats] = {}
    for r in plain_res:
        plain.update(r.entries)
    plain = dict(sorted(plain.items(), key=lambda kv: _order(space)[kv[0]]))
    level = calibrate.reference_level(cal_groups)
    entries, scale = calibrate.fit_entries(plain, cal_groups, level, cal.prior_weight) if cal_archs else (plain, 1.0)
    calibration_info = {
        "networks": len(cal_archs), "seed": cal.seed, "stream": f"{calibrate.CALIBRATION}:{cal.seed}",
        "prior_weight": cal.prior_weight, "plain_scale": scale, "group_size": cal.group_size,
        "rounds": [g.rounds for g in cal_groups], "noise_floor": [g.noise_floor for g in cal_groups],
        "reference_arch": reference_arch(space).encode(), "reference_ms": level,
        "reference_by_group_ms": [g.reference.latency_ms for g in cal_groups],
        "min_rounds": cfg.min_rounds, "max_rounds": cfg.max_rounds, "target_floor": cfg.target_floor,
        "archs": [a.encode() for a in cal_archs],
    }
    node = plain_res[0].node
    per_class = next((r.head_ms_per_class for r in plain_res if r.head_ms_per_class is not None), None)
    prov = Provenance(
        hardware=profile.name, hardware_kind=profile.kind, space=space.name, space_fingerprint=space.fingerprint(),
        resolution=space.resolution, batch_size=cfg.batch_size, dtype=cfg.dtype,
        threads=cfg.threads, device=cfg.device, device_name=node.device_name, torch_version=node.torch_version,
        cuda_version=node.cuda_version, created=utc_now(),
        warmup=cfg.warmup, repeats=cfg.repeats, min_repeat_ms=cfg.min_repeat_ms, statistic=cfg.statistic,
        clock=cfg.clock, method=cfg.method, source="measured",
        call_overhead_ms=0.0 if cal_archs else float(np.median([r.node.overhead_ms for r in plain_res])),
        node_id=",".join(sorted({r.node.node_id for r in results if r.node.node_id})) or None,
        hostname=",".join(sorted({r.node.hostname for r in results})),
        body_fingerprint=space.body_fingerprint(), head_classes=space.num_classes, head_ms_per_class=per_class,
        allocator=node.allocator, calibration=calibration_info,
    )
    table = LatencyTable(prov, entries)
    if val_groups:
        table = table.with_provenance(validation=validation_record(table, val_groups, cal.validation_seed))
        log.info("%s on %s: %s", profile.name, space.name, describe(table.provenance.validation))
    return table


def _runtime_jobs(space: SearchSpace, archs: list[Arch], cfg: MeasureConfig, size: int, seed: int) -> list[Job]:
    return [(measure_runtime_chunk, (space.name, [a.encode() for a in g], cfg, seed + i), len(g) + 1)
            for i, g in enumerate(calibrate.groups_of(archs, size))]


def _scaled_whole(results: Sequence[ChunkResult], level: float) -> dict[str, tuple[float, tuple[float, float]]]:
    """Every network's latency and halves from runtime chunks, each group put at the reference level ``level``."""
    out = {}
    for r in results:
        f = level / r.whole[REFERENCE]["ms"]
        for arch, t in r.whole.items():
            if arch != REFERENCE:
                out[arch] = (t["ms"] * f, (t["halves"][0] * f, t["halves"][1] * f))
    return out


def build_runtime_table(space: SearchSpace, profile: HardwareProfile, cfg: MeasureConfig, use_ray: bool,
                        calibration: CalibrationConfig | None) -> LatencyTable:
    """A table of ``space`` in a deployment runtime on ``profile``'s node: whole calibration and held-out networks,
    drawn as a kit draws them, exported in the runtime's format and timed there round-robin with the reference
    network; the entries are fitted from the calibration networks (``latency.fit``) and scored on the others. A
    part then costs what it costs inside the graph the runtime runs (BatchNorm folded, activations fused)."""
    cal = calibration or CalibrationConfig(networks=0, validate=0)
    if cal.networks < 3:
        raise ValueError(f"a {cfg.runtime} table is fitted from whole networks: --calibrate must be at least 3, "
                         f"got {cal.networks}")
    cal_archs, val_archs = kit_archs(space, cal.networks, cal.validate, cal.seed, cal.validation_seed)
    jobs = _runtime_jobs(space, cal_archs + val_archs, cfg, cal.group_size, 0)
    desc = f"build {profile.name} ({cfg.runtime})"
    results = run_ray(jobs, profile, cfg, desc) if use_ray else run_local(jobs, desc)
    refs = [r.whole[REFERENCE]["ms"] for r in results]
    level = float(np.median(refs))
    timed = _scaled_whole(results, level)
    fit = fit_whole_networks(space, [a.encode() for a in cal_archs], [timed[a.encode()][0] for a in cal_archs])
    node = results[0].node
    prov = Provenance(
        hardware=profile.name, hardware_kind=profile.kind, space=space.name, space_fingerprint=space.fingerprint(),
        resolution=space.resolution, batch_size=cfg.batch_size, dtype=cfg.dtype, threads=cfg.threads,
        device=cfg.device, device_name=node.device_name, torch_version=node.torch_version,
        cuda_version=node.cuda_version, created=utc_now(), warmup=cfg.warmup, statistic="min", clock=cfg.clock,
        method="whole-network fit", source="measured",
        node_id=",".join(sorted({r.node.node_id for r in results if r.node.node_id})) or None,
        hostname=",".join(sorted({r.node.hostname for r in results})),
        body_fingerprint=space.body_fingerprint(), head_classes=space.num_classes, head_ms_per_class=None,
        calibration={**fit.info, "seed": cal.seed, "stream": f"{calibrate.CALIBRATION}:{cal.seed}",
                     "group_size": cal.group_size, "rounds": [r.whole[REFERENCE]["rounds"] for r in results],
                     "reference_arch": reference_arch(space).encode(), "reference_ms": level,
                     "reference_by_group_ms": refs, "min_rounds": cfg.min_rounds, "max_rounds": cfg.max_rounds,
                     "target_floor": cfg.target_floor, "archs": [a.encode() for a in cal_archs],
                     "measurements": len(cal_archs) + len(val_archs)},
        runtime=cfg.runtime, runtime_version=node.runtime_version,
        provider=cfg.provider or kit_runner.default_provider(cfg.runtime),
    )
    table = LatencyTable(prov, fit.entries)
    if val_archs:
        table = table.with_provenance(validation=_runtime_record(table, [a.encode() for a in val_archs], timed,
                                                                 cal.validation_seed))
        log.info("%s (%s) on %s: %s", profile.name, cfg.runtime, space.name, describe(table.provenance.validation))
    return table


def _runtime_record(table: LatencyTable, archs: list[str], timed: dict, seed: int) -> dict:
    space = table.space()
    figures = score_networks(table.to_model(space), table.to_model(space, plain=True), archs,
                             [timed[a][0] for a in archs], [timed[a][1] for a in archs])
    return {"created": utc_now(), "seed": seed, "stream": f"{calibrate.VALIDATION}:{seed}", "sampling": "spread",
            **figures}


def build_tables(space: SearchSpace, jobs: Sequence[tuple[HardwareProfile, MeasureConfig]], use_ray: bool,
                 calibration: CalibrationConfig | None = CalibrationConfig()) -> list[LatencyTable]:
    """Build one table per (profile, config); on Ray the different hardware is measured at the same time."""
    if not use_ray or len(jobs) == 1:
        return [build_table(space, p, cfg, use_ray, calibration) for p, cfg in jobs]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(lambda job: build_table(space, job[0], job[1], True, calibration), jobs))


def _order(space: SearchSpace) -> dict[str, int]:
    return {k: i for i, k in enumerate(entry_keys(space))}


def config_of(table: LatencyTable) -> MeasureConfig:
    """The measurement settings a table was built with, to time whole networks the same way."""
    p = table.provenance
    if p.source != "measured":
        raise ValueError(f"table {p.hardware!r} was imported ({p.source}); it can only be validated on its hardware")
    rounds = {k: p.calibration[k] for k in ("min_rounds", "max_rounds", "target_floor")
              if p.calibration and k in p.calibration}
    runtime = {} if p.runtime == "torch" else {"runtime": p.runtime, "provider": p.provider,
                                               "method": "in-network"}  # (a fitted table's method, unused there)
    return MeasureConfig(**{**dict(batch_size=p.batch_size, threads=p.threads, dtype=p.dtype, device=p.device,
                                   warmup=p.warmup or 0, repeats=p.repeats or 3,
                                   min_repeat_ms=p.min_repeat_ms or 0.0, statistic=p.statistic, clock=p.clock,
                                   method=p.method,
                                   allocator="pinned" if p.allocator and "no mmap" in p.allocator else "system"),
                            **rounds, **runtime})


# ---- validation -------------------------------------------------------------------------------------------------
def reference_ms(table: LatencyTable) -> float:
    """The reference network's latency when the table was built (older tables: the table's own prediction)."""
    cal = table.provenance.calibration or {}
    if "reference_ms" in cal:
        return float(cal["reference_ms"])
    space = table.space()
    return table.to_model(space).exact(reference_arch(space))


def reference_factor(table: LatencyTable, result: ChunkResult) -> float:
    """The factor that puts networks timed in ``result`` (``measure_archs_chunk``) at the host speed the table
    was built at: the table's reference latency over the reference network timed with them."""
    return reference_ms(table) / result.entries[REFERENCE].latency_ms


def validation_record(table: LatencyTable, groups: Sequence[GroupTiming], seed: int) -> dict:
    """The figures of a validation on ``groups`` (see ``calibrate.score``), with when, what and how it ran."""
    space = table.space()
    figures = calibrate.score(table.to_model(space), table.to_model(space, plain=True), groups,
                              reference_ms(table), space)
    return {"created": utc_now(), "seed": seed, "stream": f"{calibrate.VALIDATION}:{seed}", "sampling": "spread",
            "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None, **figures}


def describe(v: dict) -> str:
    """One line of a validation record: the model, the noise floor and the plain table side by side."""
    nf, pl = v.get("noise_floor"), v["plain"]
    floor = (f"noise floor {nf['median_gap']:.1%} (halves within ±10% {nf['within_10pct']:.0%}, Spearman "
             f"{nf['spearman']:.3f})" if nf else "noise floor unknown (no file repeated)")
    drift = f"; host drift {v['drift']:+.1%}" if v.get("drift") is not None else ""
    return (f"{v['samples']} held-out networks: within ±10% {v['within_10pct']:.0%}, Spearman {v['spearman']:.3f}, "
            f"MAPE {v['mape']:.1%}; {floor}; plain table within ±10% {pl['within_10pct']:.0%}, Spearman "
            f"{pl['spearman']:.3f}, MAPE {pl['mape']:.1%}{drift}")


def validate_table(table: LatencyTable, samples: int, seed: int, use_ray: bool, group_size: int = 30,
                   spread: bool = True) -> dict:
    """Measure ``samples`` held-out networks on the table's hardware and score the table and its plain entries.

    The networks come from the validation stream ``validation:<seed>`` and never repeat a calibration network;
    ``seed`` must differ from the calibration seed. ``spread`` draws them across the latency range; otherwise
    uniformly (every candidate equally likely, a narrow range: a harder test of ranking). Returns the validation
    record (``validation_record``)."""
    space = table.space()
    table.to_model(space)
    cfg = config_of(table)
    cal = table.provenance.calibration or {}
    if samples < 3:
        raise ValueError(f"validation needs at least 3 networks, got {samples}")
    if cal.get("networks") and seed == cal.get("seed"):
        raise ValueError(f"--seed {seed} is the table's calibration seed: choose another for held-out networks")
    profile = HardwareProfile(table.provenance.hardware, table.provenance.hardware_kind)
    archs = calibrate.spread_archs(space, samples, seed, calibrate.VALIDATION, exclude=cal.get("archs", ()),
                                   tilt=3.0 if spread else 0.0)
    runtime = cfg.runtime != "torch"
    jobs = (_runtime_jobs if runtime else _group_jobs)(space, archs, cfg, group_size, 2000)
    desc = f"validate {profile.name}"
    results = run_ray(jobs, profile, cfg, desc) if use_ray else run_local(jobs, desc)
    if runtime:
        refs = [r.whole[REFERENCE]["ms"] for r in results]
        record = _runtime_record(table, [a.encode() for a in archs], _scaled_whole(results, reference_ms(table)),
                                 seed)
        record["drift"] = float(np.median(refs)) / reference_ms(table) - 1.0
    else:
        record = validation_record(table, [r.group for r in results], seed)
    return {**record, "sampling": "spread" if spread else "uniform"}
