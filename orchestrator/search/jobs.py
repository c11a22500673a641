"""The search as a job: its checks, its MLflow record, and its Ray Train worker.

Data-parallel on Ray, every rank samples the same paths without communicating (paths are a pure function of seed
and step, see ``search.sampling``), takes its slice of each global batch, and all-reduces (averages) the active
path's weight gradients and α's gradient before every optimiser step, so every rank applies the same update. A
cheap periodic check gathers every rank's α and sampled-path fingerprints and fails the run loudly
(``RanksDiverged``, never retried) if they ever differ. Rank 0 alone logs metrics (through a
``tracking.MetricSink``, so a slow or absent tracking server never holds the other ranks) and writes checkpoints.
The same record (parameters, tags, curves, result, artifacts) is written by a one-process run (``search.local``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator import tracking
from orchestrator.arch import Arch
from orchestrator.cost import search_cost
from orchestrator.faults import Faults, inject_divergence_once, inject_fault_once, pause_once
from orchestrator.latency.calibrate import validation_metrics
from orchestrator.latency.model import LatencyModel
from orchestrator.netconfig import to_net_config
from orchestrator.provenance import provenance
from orchestrator.ray_train import ClusterSpec, load_state_uri, run_on_ray, start_worker
from orchestrator.runs import RunInfo
from orchestrator.search.config import SearchConfig, config_from_dict
from orchestrator.search.loop import check_target, open_data, resolve_latency, run_search, search_feeds
from orchestrator.search.state import SearchState, alpha_fingerprint, path_fingerprint, state_dict
from orchestrator.train.runtime import Comm, Precision, RanksDiverged, Runtime

__all__ = ["CHECKPOINT_FILE", "RanksDiverged", "SearchJob", "SearchRun", "run_distributed_search",
           "default_run_name", "check_consistency", "log_search_result", "alpha_table_csv", "cost_metrics"]

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "search_state.pt"


def check_consistency(comm: Comm, alpha_fp: str, path_fp: str, step: int) -> list[str]:
    """Gather every rank's α and path fingerprints; raise ``RanksDiverged`` naming the ranks that differ."""
    got = comm.gather((alpha_fp, path_fp))
    for what, i in (("architecture parameters", 0), ("sampled paths", 1)):
        values = [g[i] for g in got]
        if len(set(values)) != 1:
            odd = [r for r, v in enumerate(values) if v != values[0]]
            raise RanksDiverged(f"{what} diverged across ranks at step {step}: rank(s) {odd} differ from rank 0 "
                                f"({values[0][:12]} vs {values[odd[0]][:12]})")
    return [g[0] for g in got]


def default_run_name(cfg: SearchConfig) -> str:
    """A folder-safe name from the space (its variant too), hardware, target and seed."""
    space = re.sub(r"[^A-Za-z0-9._-]+", "-", cfg.search_space.name).strip("-")
    return f"search-{space}-{cfg.hardware}-t{cfg.target:g}-s{cfg.seed}"


@dataclass(frozen=True)
class SearchRun:
    """A search run's result: rank 0's ``SearchResult.to_dict()`` (plus what every rank saw) and its run."""

    search: dict
    run_id: str | None
    tracking_uri: str | None
    storage_path: str | None
    name: str
    checkpoint_path: str | None
    worker_seconds: float
    wall_seconds: float

    @property
    def state_uri(self) -> str | None:
        """The final search state, e.g. a shared warm-up for ``warm_start``."""
        return f"{self.checkpoint_path}/{CHECKPOINT_FILE}" if self.checkpoint_path else None


@dataclass
class SearchJob:
    """One search, as ``run_on_ray`` and the one-process entry run it: the config, the consistency-check cadence,
    a shared warm-up to fork from (or to stop at), and the faults a test injects."""

    cfg: SearchConfig
    consistency_every: int = 10  # weight steps between α-consistency checks across ranks
    warm_start: str | None = None  # URI of a shared warm-up state (search_state.pt) to fork a fresh run from
    warmup_only: bool = False  # stop at the end of warm-up: the run that produces a sweep's shared warm-up
    faults: Faults = field(default_factory=Faults)
    kind: str = "search"
    experiment: str = "nas-search"
    checkpoint_file: str = CHECKPOINT_FILE
    checkpoints_kept: int = 2
    _data_where: str | None = field(default=None, init=False, repr=False, compare=False)
    _latency: LatencyModel | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.consistency_every < 1:
            raise ValueError(f"consistency_every: must be at least 1, got {self.consistency_every}")

    @property
    def latency(self) -> LatencyModel:
        """The latency model of the config's hardware (resolved once)."""
        if self._latency is None:
            self._latency = resolve_latency(self.cfg)
        return self._latency

    def default_name(self) -> str:
        return default_run_name(self.cfg)

    def preflight(self, num_workers: int) -> None:
        latency = self.latency  # unknown hardware or a bad table fails here, before any worker starts
        check_target(self.cfg, latency)  # so does a hard budget below the fastest net
        data = open_data(self.cfg)  # so does data that does not fit the space (its classes), or that is not there
        search_feeds(self.cfg, data, Runtime(comm=_Shape(0, num_workers)))  # and batches that do not split
        self._data_where = data.where

    def run_meta(self) -> dict:
        space = self.cfg.search_space
        return {"space": space.name, "space_fingerprint": space.fingerprint(), "config": self.cfg.to_dict()}

    def tags(self, name: str, where: str) -> dict[str, str]:
        cfg, space = self.cfg, self.cfg.search_space
        return {"nas.kind": "search", "nas.space": space.name, "nas.space_fingerprint": space.fingerprint(),
                "nas.hardware": cfg.hardware, "nas.target": f"{cfg.target:g}", "nas.run_name": name,
                "nas.storage": where, "nas.data": self._data_where or open_data(cfg).where, "nas.runtime": cfg.runtime}

    def params(self, how: dict) -> dict:
        return {"search": self.cfg.to_dict(), "run": how, "provenance": provenance()}

    def on_created(self, uri: str, run_id: str) -> None:
        log_latency_model(uri, run_id, self.latency)

    def worker_config(self) -> dict:
        return {"search": self.cfg.to_dict(), "consistency_every": self.consistency_every,
                "warm_start": self.warm_start, "warmup_only": self.warmup_only, "faults": asdict(self.faults)}

    def train_func(self) -> Callable[[dict], dict]:
        return search_worker

    def finish(self, out: dict, run: RunInfo) -> SearchRun:
        if out.get("diverged"):
            raise RanksDiverged(f"search {run.name!r} failed: {out['diverged']}")
        if run.run_id is not None:
            on_gpu = str(out.get("device", "cpu")).startswith("cuda")  # what the workers really ran on
            cost = cost_metrics(out, run.worker_seconds, run.wall_seconds, on_gpu)
            log_search_result(run.tracking_uri, run.run_id, out, cost={**cost, **run.tracking})
        return SearchRun(out, run.run_id, run.tracking_uri, run.storage_path, run.name, run.checkpoint_path,
                                 run.worker_seconds, run.wall_seconds)


class _Shape(Comm):
    """The rank and world size of a rank-to-be, for checks before any worker exists (no collectives)."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world


def run_distributed_search(cfg: SearchConfig, cluster: ClusterSpec, *, consistency_every: int = 10,
                           warm_start: str | None = None, warmup_only: bool = False, faults: Faults = Faults(),
                           callbacks: Sequence[Any] = ()) -> SearchRun:
    """Run the search on ``cluster.num_workers`` Ray Train workers (``ray_train.run_on_ray``)."""
    job = SearchJob(cfg, consistency_every, warm_start, warmup_only, faults)
    return run_on_ray(job, cluster, callbacks)


# ---------------------------------------------------------------------------------------------------- the worker
def search_worker(config: dict) -> dict:
    """Runs on every Train worker: restore or start, search on this rank's device with averaged gradients,
    check that ranks agree, report checkpoints. Ranks that diverged return ``{"diverged": why}`` (every rank
    sees the same check) instead of raising, so that Ray Train does not restart them: a divergence is a bug to
    report, not a fault to retry."""
    import ray

    job = config["job"]
    cfg = config_from_dict(job["search"])
    faults = Faults.from_dict(job["faults"])
    w = start_worker(config, CHECKPOINT_FILE, "checkpoint", cfg.seed, Precision(cfg.precision, cfg.channels_last))
    rt, restored = w.rt, w.resume is not None
    warm = load_state_uri(job["warm_start"]) if w.resume is None and job["warm_start"] else None
    checks: list[tuple[int, list[str]]] = []  # (step, per-rank α fingerprints) of every consistency check
    # a resumed group replays the steps after its checkpoint: those already recorded are not logged twice
    logged = tracking.logged_steps(w.sink.uri, config["run_id"], "entropy") \
        if w.sink is not None and restored else set()
    odd = min(1, rt.world - 1)  # the rank that fault injection hits

    def consistent(state: SearchState) -> list[str]:
        fps = check_consistency(rt.comm, alpha_fingerprint(state), path_fingerprint(state.paths), state.step)
        state.paths.clear()
        checks.append((state.step, fps))
        return fps

    def after_step(state: SearchState) -> None:
        if faults.diverge_at_step == state.step and rt.rank == odd and rt.world > 1:
            inject_divergence_once(w.run_dir, state)
        if state.step % job["consistency_every"] == 0:
            consistent(state)
        if faults.kill_at_step is not None and rt.rank == odd and state.step >= faults.kill_at_step:
            inject_fault_once(w.run_dir, rt.rank, state.step)
        if state.step in faults.pause_at_steps:
            pause_once(w.run_dir, rt.comm, state.step, ray.get_runtime_context().get_node_id())

    def on_step(state: SearchState, row: dict) -> None:
        if w.sink is not None and state.step not in logged:
            w.sink.log(curve_metrics(row), step=state.step)

    def checkpoint(state: SearchState) -> None:
        fps = consistent(state)
        saved = state_dict(state)  # collective: BN statistics averaged, every rank's RNG gathered
        w.report({"step": state.step, "arch_step": state.arch_step, "alpha_fingerprints": fps,
                  "restored": restored, "world_size": rt.world},
                 {CHECKPOINT_FILE: saved, "alpha_fingerprints.json": {"step": state.step, "ranks": fps}})

    try:
        result = run_search(cfg, rt=rt, on_step=on_step, after_step=after_step, checkpoint=checkpoint,
                            resume=w.resume, latency=resolve_latency(cfg), warm_start=warm,
                            warmup_only=job["warmup_only"], progress=w.progress)
    except RanksDiverged as e:
        log.error("rank %d: %s", rt.rank, e)
        return {"diverged": str(e), "consistency_checks": checks}
    out = result.to_dict()
    out["rank_fingerprints"] = rt.comm.gather(result.alpha_fingerprint)
    out["rank_archs"] = rt.comm.gather(result.arch)
    out["rank_nodes"] = rt.comm.gather(ray.get_runtime_context().get_node_id())
    out["consistency_checks"] = checks
    out["restored"] = restored
    out["resumed_from_step"] = w.resume["step"] if restored else None
    out["tracking"] = w.close()
    return out


# ---------------------------------------------------------------------------------------------------- the records
def curve_metrics(row: dict) -> dict[str, float]:
    """The numeric values of a curve row (its phase is a string)."""
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_latency_model(uri: str, run_id: str, latency: LatencyModel) -> None:
    """The latency model a search optimised against: its provenance as an artifact, its held-out validation
    (within ±10%, Spearman, MAPE, noise floor, and the plain table's figures) as metrics."""
    tracking.log_artifact_files(uri, run_id, {"latency_model.json": json.dumps(
        {"hardware": latency.hardware, "unit": latency.unit, "provenance": latency.provenance}, indent=1,
        default=str)})
    tracking.log_metrics(uri, run_id, validation_metrics(latency.provenance), step=0)


def cost_metrics(search: dict, worker_seconds: float, wall: float, on_gpu: bool) -> dict[str, float]:
    """A search's cost record: worker-seconds of the whole run (start-up included), GPU-seconds only when it ran on
    GPUs, rank 0's seconds per phase, each timed directly (``SearchResult.seconds``), and the ``cost.*`` breakdown
    (warm-up, weight steps, architecture steps, the rest) every run and point carries."""
    phases = {f"{k}_seconds": float(v) for k, v in search.get("seconds", {}).items()}
    parts = search_cost(search.get("seconds", {}), worker_seconds, int(search.get("world_size", 1)), on_gpu)
    return {"worker_seconds": worker_seconds, "gpu_seconds": worker_seconds if on_gpu else 0.0,
            "wall_seconds": wall, **phases, **parts.metrics()}


def _cell(v: float | None) -> str:
    return "" if v is None or v != v or v in (float("inf"), float("-inf")) else f"{v:.6g}"


def alpha_table_csv(search: dict) -> str:
    """α and probabilities per block and candidate, one row per block: the artifact users read in MLflow."""
    cands = search["candidates"]
    head = "block," + ",".join(f"alpha_{c}" for c in cands) + "," + ",".join(f"p_{c}" for c in cands)
    rows = [head]
    for b, (a, p) in enumerate(zip(search["alpha"], search["probs"])):
        rows.append(f"{b}," + ",".join(map(_cell, a)) + "," + ",".join(map(_cell, p)))
    return "\n".join(rows) + "\n"


def log_search_result(uri: str, run_id: str, search: dict, cost: dict) -> None:
    """The derived architecture, α table, net.config and result as artifacts; headline metrics (the derived net's
    top-1 on the validation split with its supernet weights as ``val_accuracy``, on ``val_images``); tags."""
    arch = Arch.parse(search["arch"])
    tracking.log_artifact_files(uri, run_id, {
        "arch.txt": search["arch"] + "\n",
        "alpha.csv": alpha_table_csv(search),
        "net.config": json.dumps(to_net_config(arch), indent=4),
        "result.json": json.dumps(search, indent=1, default=str),
    })
    metrics = {"exact_latency": search["exact_latency"], "expected_latency": search["expected_latency"],
               "entropy": search["entropy"], "val_images": search.get("val_images", 0), **cost}
    if search.get("valid_accuracy") is not None:
        metrics["supernet_valid_accuracy"] = metrics["val_accuracy"] = search["valid_accuracy"]
    tracking.log_metrics(uri, run_id, metrics, step=search["steps"])
    tracking.set_tags(uri, run_id, {"nas.arch": search["arch"], "nas.alpha_fingerprint": search["alpha_fingerprint"]})
