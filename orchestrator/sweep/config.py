"""Typed sweep configuration: which search to sweep over which hardware and latency targets, and how.

Targets are per hardware because units differ (ms for measured profiles, MMAC for ``flops``). A hardware entry
gives absolute ``targets``, ``relative`` positions in the space's reachable range (0 = fastest net, 1 = largest;
handy when a measured table's range depends on the machine), or a Tune ``distribution`` with a sample count.
Everything is checked on load, and every target against ``LatencyModel.bounds()`` before any compute is spent.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.cluster_checks import check_worker_shape
from orchestrator.config import check_limits, refuse_non_finite
from orchestrator.config import apply_overrides, read_yaml, to_dict
from orchestrator.latency.hardware import default_profile
from orchestrator.search.config import load_config
from orchestrator.search.loop import resolve_latency
from orchestrator.latency.profiles import RUNTIMES
from orchestrator.redact import redact_obj
from orchestrator.retrain.config import RetrainConfig, retrain_config_from_dict

log = logging.getLogger(__name__)

DISTRIBUTIONS = ("uniform", "loguniform")
THIS_CPU = "this-cpu"  # alias: the measured profile of the driver's CPU (cpu-<model>)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class HardwareGrid:
    """The targets of one hardware profile: exactly one of ``targets``, ``relative`` or ``distribution``."""

    hardware: str
    targets: tuple[float, ...] = ()
    relative: tuple[float, ...] = ()
    distribution: str | None = None  # uniform | loguniform over [low, high], ``samples`` draws
    low: float | None = None
    high: float | None = None
    samples: int = field(default=0, metadata={"max": 10_000})
    table: str | None = None  # latency table URI for a measured profile or a kit device
    runtime: str | None = None  # what runs the nets on this hardware; None: the base search config's runtime
    front: tuple[float, ...] = ()  # extra budgets: each trial also derives, from its own α, the best net under each
    # of these (at no search cost), measures and retrains it as an extra point of the front (``nas.point=front``)
    front_relative: tuple[float, ...] = ()  # the same as positions in the reachable range, like ``relative``

    def __post_init__(self) -> None:
        where = f"grid[{self.hardware}]"
        given = [bool(self.targets), bool(self.relative), self.distribution is not None]
        if sum(given) != 1:
            raise ValueError(f"{where}: give exactly one of targets, relative or distribution")
        if any(not t > 0 for t in self.targets):
            raise ValueError(f"{where}.targets: every target must be positive, got {list(self.targets)}")
        if len(set(self.targets)) != len(self.targets) or len(set(self.relative)) != len(self.relative):
            raise ValueError(f"{where}: a target is listed twice")
        if any(not b > 0 for b in self.front) or len(set(self.front)) != len(self.front):
            raise ValueError(f"{where}.front: budgets must be positive and distinct, got {list(self.front)}")
        if any(not 0 < r <= 1 for r in self.relative):
            raise ValueError(f"{where}.relative: positions must be in (0, 1], got {list(self.relative)}")
        if self.front and self.front_relative:
            raise ValueError(f"{where}: give front or front_relative, not both")
        if any(not 0 < r <= 1 for r in self.front_relative) or len(set(self.front_relative)) != len(
                self.front_relative):
            raise ValueError(f"{where}.front_relative: positions must be distinct and in (0, 1], got "
                             f"{list(self.front_relative)}")
        if self.distribution is not None:
            if self.distribution not in DISTRIBUTIONS:
                raise ValueError(f"{where}.distribution: unknown {self.distribution!r} "
                                 f"(known: {', '.join(DISTRIBUTIONS)})")
            if self.low is None or self.high is None or not 0 < self.low < self.high:
                raise ValueError(f"{where}: a distribution needs 0 < low < high, got {self.low} and {self.high}")
            if self.samples < 1:
                raise ValueError(f"{where}.samples: must be at least 1, got {self.samples}")
        check_limits(self, f"{where}.")

    @property
    def sampled(self) -> bool:
        return self.distribution is not None


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: a base search config, a grid over hardware x targets (x seeds), resources and a retrain recipe."""

    name: str  # the MLflow experiment, and the sweep's folder under ``storage``
    search: str  # base search config (YAML path; relative paths are relative to the sweep file)
    grid: tuple[HardwareGrid, ...]
    overrides: tuple[str, ...] = ()  # ``key=value`` applied to the base search config
    seeds: tuple[int, ...] = ()  # empty: the base config's seed; each seed has its own shared warm-up
    workers_per_trial: int = field(default=1, metadata={"max": 1024})
    cpus_per_worker: float = 0.5
    use_gpu: bool = False  # one GPU per Train worker, for the warm-up, every trial's search and its retrain
    allow_autoscale: bool = False  # the cluster autoscales: do not refuse workers its nodes cannot host yet
    max_concurrent_trials: int = field(default=2, metadata={"max": 1024})
    storage: str = "runs/sweeps"  # local path (one node), NFS or s3://bucket/prefix
    tracking_uri: str | None = None
    shared_warmup: bool = True  # False: every trial pays its own warm-up (the benchmark's baseline)
    retrain: RetrainConfig | None = field(default_factory=RetrainConfig)  # None: search and measure only; its data
    # defaults to the search's data section (retrain on the data the search ran on)
    measure_rounds: int | None = None  # round-robin rounds timing each derived net (default: the table's own)

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"name: {self.name!r} must be letters, digits, '.', '_' or '-'")
        if not self.grid:
            raise ValueError("grid: empty; give at least one hardware with its targets, e.g. "
                             "[{hardware: flops, targets: [0.1]}]")
        hws = [g.hardware for g in self.grid]
        if len(set(hws)) != len(hws):
            raise ValueError(f"grid: hardware listed twice in {hws}")
        if len({g.sampled for g in self.grid}) > 1:
            raise ValueError("grid: mix of listed targets and distributions; use one kind for every hardware")
        if self.grid[0].sampled and len({g.samples for g in self.grid}) > 1:
            raise ValueError("grid: every distribution needs the same samples count (one Tune sample per hardware)")
        check_worker_shape(self.workers_per_trial, self.cpus_per_worker, "workers_per_trial")
        if self.max_concurrent_trials < 1:
            raise ValueError(f"max_concurrent_trials: must be at least 1, got {self.max_concurrent_trials}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: a seed is listed twice in {list(self.seeds)}")
        check_limits(self)

    def replace(self, **changes: Any) -> "SweepConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The sweep as it is recorded (MLflow parameters, ``sweep-meta.json``) and matched on resume: plain data,
        credentials in its tracking URI masked."""
        return redact_obj(to_dict(self))


# ---- loading ----------------------------------------------------------------------------------------------------

def _numbers(key: str, value: Any) -> tuple[float, ...]:
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        raise ValueError(f"{key}: expected a list of numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _grid_entry(i: int, item: Any) -> HardwareGrid:
    key = f"grid[{i}]"
    if not isinstance(item, dict) or not isinstance(item.get("hardware"), str):
        raise ValueError(f"{key}: expected a mapping with 'hardware' and its targets, got {item!r}")
    known = {"hardware", "targets", "relative", "table", "front", "front_relative", "runtime"}
    unknown = sorted(set(item) - known)
    if unknown:
        raise ValueError(f"{key}.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    hw = item["hardware"]
    if hw == THIS_CPU:
        hw = default_profile("cpu").name
    targets, kwargs = item.get("targets"), {}
    if isinstance(targets, dict):
        dist = {k: v for k, v in targets.items()}
        kinds = [k for k in DISTRIBUTIONS if k in dist]
        if len(kinds) != 1 or not isinstance(dist.get("samples"), int):
            raise ValueError(f"{key}.targets: a distribution is {{uniform|loguniform: [low, high], samples: N}}")
        low, high = _numbers(f"{key}.targets.{kinds[0]}", dist[kinds[0]])
        kwargs = dict(distribution=kinds[0], low=low, high=high, samples=dist["samples"])
    elif targets is not None:
        kwargs["targets"] = _numbers(f"{key}.targets", targets)
    if item.get("relative") is not None:
        kwargs["relative"] = _numbers(f"{key}.relative", item["relative"])
    for k in ("front", "front_relative"):
        if item.get(k) is not None:
            kwargs[k] = _numbers(f"{key}.{k}", item[k])
    table = item.get("table")
    if table is not None and not isinstance(table, str):
        raise ValueError(f"{key}.table: expected a URI, got {table!r}")
    runtime = item.get("runtime")
    if runtime is not None and runtime not in RUNTIMES:
        raise ValueError(f"{key}.runtime: unknown value {runtime!r} (known: {', '.join(RUNTIMES)})")
    return HardwareGrid(hardware=hw, table=table, runtime=runtime, **kwargs)


_SCALARS = {"name": str, "search": str, "workers_per_trial": int, "cpus_per_worker": float, "use_gpu": bool,
            "allow_autoscale": bool, "max_concurrent_trials": int, "storage": str, "tracking_uri": str,
            "shared_warmup": bool, "measure_rounds": int}


def sweep_from_dict(data: Mapping[str, Any], base_dir: Path = Path(".")) -> SweepConfig:
    """A ``SweepConfig`` from a parsed YAML mapping; relative ``search`` and table paths resolve against
    ``base_dir`` (the sweep file's folder), so a sweep file means the same from any working directory."""
    if not isinstance(data, Mapping):
        raise ValueError("a sweep config must be a mapping")
    refuse_non_finite(dict(data))
    known = {*_SCALARS, "grid", "overrides", "seeds", "retrain"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    for k in ("name", "search", "grid"):
        if k not in data:
            raise ValueError(f"{k}: missing")
    kwargs: dict[str, Any] = {}
    for k, typ in _SCALARS.items():
        if k not in data or data[k] is None:
            continue
        v = data[k]
        ok = isinstance(v, typ) and not (typ is not bool and isinstance(v, bool))
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            v, ok = float(v), True
        if not ok:
            raise ValueError(f"{k}: expected {typ.__name__}, got {v!r}")
        kwargs[k] = v
    kwargs["search"] = _resolve_path(kwargs["search"], base_dir)
    grid = data["grid"]
    if grid is None:
        grid = []
    if not isinstance(grid, list):
        raise ValueError(f"grid: expected a list of hardware entries, got {grid!r}")
    entries = [_grid_entry(i, item) for i, item in enumerate(grid)]
    kwargs["grid"] = tuple(dataclasses.replace(e, table=_resolve_path(e.table, base_dir) if e.table else None)
                           for e in entries)
    overrides = data.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ValueError(f"overrides: expected a list of 'key=value' strings, got {overrides!r}")
    kwargs["overrides"] = tuple(overrides)
    seeds = data.get("seeds") or []
    if not isinstance(seeds, list) or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ValueError(f"seeds: expected a list of integers, got {seeds!r}")
    kwargs["seeds"] = tuple(seeds)
    retrain = data.get("retrain", {})
    if isinstance(retrain, str):  # a retrain config file, e.g. retrain-imagenet.yaml
        path = Path(_resolve_path(retrain, base_dir))
        retrain = read_yaml(path)
        retrain = retrain.get("retrain", retrain) if isinstance(retrain, dict) else retrain
        if not isinstance(retrain, dict):
            raise ValueError(f"retrain: {path} is not a retrain config mapping")
    if retrain is not None and not isinstance(retrain, dict):
        raise ValueError(f"retrain: expected a mapping, a retrain config file or null, got {retrain!r}")
    sweep = SweepConfig(**kwargs, retrain=None)
    if retrain is not None:
        sweep = sweep.replace(retrain=retrain_config_from_dict({**retrain, "data": _retrain_data(sweep, retrain)}))
    return sweep


_RETRAIN_OWN_DATA_KEYS = ("color_jitter", "workers", "prefetch", "mp_context")


def _retrain_data(sweep: SweepConfig, retrain: dict) -> dict:
    """A sweep retrains every net on the data its search ran on: the data source comes from the search config;
    only the retrain's own colour distortion (default: strong, as the official retraining) and loader settings
    are kept from its section."""
    own = retrain.get("data") or {}
    if not isinstance(own, dict):
        raise ValueError(f"retrain.data: expected a mapping, got {own!r}")
    search = base_config(sweep).data.to_dict()
    return {**search, "color_jitter": None, **{k: v for k, v in own.items() if k in _RETRAIN_OWN_DATA_KEYS}}


def _resolve_path(p: str, base_dir: Path) -> str:
    if "://" in p or Path(p).is_absolute():
        return p
    here = (base_dir / p)
    return str(here.resolve() if here.exists() or not Path(p).exists() else Path(p).resolve())


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> SweepConfig:
    """Read a sweep YAML, apply ``--set key=value`` overrides, validate; ``ValueError`` names the bad key."""

    path = Path(path)
    data = read_yaml(path)
    try:
        return sweep_from_dict(apply_overrides(data, list(overrides)) if isinstance(data, dict) else data,
                               path.resolve().parent)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


# ---- resolving against the space --------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrialPoint:
    """One trial of a grid: a hardware, an absolute target in its unit, a seed."""

    hardware: str
    target: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.hardware}-t{self.target:.4g}-s{self.seed}"


@dataclass(frozen=True)
class HardwareInfo:
    hardware: str
    unit: str
    bounds: tuple[float, float]
    table: str | None
    runtime: str = "torch"


def base_config(sweep: SweepConfig):
    """The base search config with the sweep's overrides applied (checked like ``nas search --config``)."""
    return load_config(sweep.search, sweep.overrides)


def hardware_info(sweep: SweepConfig) -> dict[str, HardwareInfo]:
    """Every hardware's latency model on the sweep's space: its unit and reachable range (fails on a bad table)."""
    cfg = base_config(sweep)
    out = {}
    for g in sweep.grid:
        runtime = g.runtime or cfg.runtime
        model = resolve_latency(cfg.replace(hardware=g.hardware, latency_table=g.table, runtime=runtime))
        out[g.hardware] = HardwareInfo(g.hardware, model.unit, model.bounds(), g.table, runtime)
    return out


def _check_target(hw: HardwareInfo, target: float, space: str) -> None:
    lo, hi = hw.bounds
    if target < lo:
        raise ValueError(f"target {target:g} {hw.unit} for hardware {hw.hardware!r} is below the fastest network "
                         f"of space {space!r} ({lo:.4g} {hw.unit}; reachable {lo:.4g} to {hi:.4g}): no architecture "
                         f"can meet it")
    if target > hi:
        log.warning("target %g %s for %s is above the largest network of %s (%.4g): the constraint never binds",
                    target, hw.unit, hw.hardware, space, hi)


def resolve_points(sweep: SweepConfig, info: Mapping[str, HardwareInfo], default_seed: int,
                   space: str) -> list[TrialPoint]:
    """The grid's trials with absolute targets; a target no architecture can reach is refused here."""
    seeds = sweep.seeds or (default_seed,)
    points = []
    for g in sweep.grid:
        hw = info[g.hardware]
        if g.sampled:
            _check_target(hw, g.low, space)
            _check_target(hw, g.high, space)
            continue
        targets = g.targets or in_range(g.relative, hw.bounds)
        for t in (*targets, *front_budgets(g, hw)):
            _check_target(hw, t, space)
        points += [TrialPoint(g.hardware, t, s) for s in seeds for t in targets]
    return points


def in_range(positions: Sequence[float], bounds: tuple[float, float]) -> tuple[float, ...]:
    """Positions in (0, 1] of a reachable range (0 = fastest net, 1 = largest) as values in its unit."""
    lo, hi = bounds
    return tuple(round(lo + r * (hi - lo), 6) for r in positions)


def front_budgets(g: HardwareGrid, hw: HardwareInfo) -> tuple[float, ...]:
    """The grid entry's extra front budgets in its hardware's unit (``front_relative`` placed in its range)."""
    return g.front or in_range(g.front_relative, hw.bounds)


def draw_target(g: HardwareGrid, rng: random.Random) -> float:
    """One target from ``g``'s distribution (units differ per hardware, so each hardware has its own range)."""
    if g.distribution == "loguniform":
        return round(math.exp(rng.uniform(math.log(g.low), math.log(g.high))), 6)
    return round(rng.uniform(g.low, g.high), 6)


def draw_points(sweep: SweepConfig, seeds: Sequence[int], rng: random.Random | None = None) -> list[TrialPoint]:
    """A sampled grid's trials: ``samples`` targets per hardware and seed, drawn once when the sweep starts and
    recorded with it, so a resumed sweep runs the same points. Targets are distinct per hardware and seed (their
    keys name the trials' run folders)."""
    rng = rng or random.Random()
    points: list[TrialPoint] = []
    keys: set[str] = set()
    for _ in range(sweep.grid[0].samples):
        for g in sweep.grid:
            for seed in seeds:
                for _try in range(1000):
                    p = TrialPoint(g.hardware, draw_target(g, rng), seed)
                    if p.key not in keys:
                        break
                else:
                    raise ValueError(f"grid[{g.hardware}]: [{g.low:g}, {g.high:g}] is too narrow for {g.samples} "
                                     f"distinct targets")
                keys.add(p.key)
                points.append(p)
    return points
