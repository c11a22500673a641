"""The sweep driver: checks, one shared warm-up per seed, the Tune sweep (or its resumption), Pareto fronts.

Order matters for cost: everything that can fail cheaply (config, tables, targets against the space's reachable
range, tracking, storage, cluster resources) fails before any training; the warm-up runs once and its state is
recorded in ``sweep-meta.json`` beside Tune's own state, so a resumed sweep neither repeats the warm-up nor a
finished trial, and reuses the same MLflow parent run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from collections.abc import Callable

from orchestrator import storage as st
from orchestrator import tracking
from orchestrator.cluster_checks import check_resources, check_storage, per_worker_resources
from orchestrator.ray_session import ray_session
from orchestrator.ray_train import ClusterSpec
from orchestrator.redact import redact
from orchestrator.search.config import SearchConfig
from orchestrator.search.jobs import run_distributed_search
from orchestrator.sweep.config import SweepConfig, TrialPoint, base_config, hardware_info, resolve_points
from orchestrator.sweep.measure import check_hardware_available
from orchestrator.sweep.report import compare_fronts
from orchestrator.sweep.trial import TrialContext, draw_target, sweep_trial

log = logging.getLogger(__name__)

META_FILE = "sweep-meta.json"
TUNE_NAME = "tune"


@dataclass(frozen=True)
class SweepResult:
    name: str
    tracking_uri: str
    parent_run_id: str
    trials: tuple[dict, ...]  # each finished trial's final report
    errors: tuple[str, ...]
    warmup_worker_seconds: float
    wall_seconds: float
    resumed: bool
    pareto: dict
    pareto_dir: str

    @property
    def worker_seconds(self) -> float:
        """Compute of the whole sweep: the warm-up(s) plus every trial's search, measurement and retrain."""
        return self.warmup_worker_seconds + sum(
            t.get("search_worker_seconds", 0) + t.get("measure_seconds", 0) + t.get("retrain_worker_seconds", 0)
            for t in self.trials)


def _meta_io(storage: str, name: str):
    loc = st.resolve(storage)
    rel = f"{name}/{META_FILE}"
    read = lambda: json.loads(st.read_bytes(loc, rel)) if st.exists(loc, rel) else None  # noqa: E731
    write = lambda meta: st.publish_bytes(loc, rel, json.dumps(meta, indent=1).encode())  # noqa: E731
    return read, write


def _start_or_resume_parent(sweep: SweepConfig, uri: str, read, write, points) -> tuple[dict, bool]:
    """The sweep's MLflow parent run: created once, reused on resume (its stale children closed as KILLED)."""
    meta = read()
    if meta is not None:
        if meta.get("config") != json.loads(json.dumps(sweep.to_dict())):  # as stored: tuples become lists
            raise ValueError(f"sweep {sweep.name!r} in {sweep.storage} was started with another config; "
                             f"refusing to resume it: choose another name")
        stale = tracking.mark_stale_runs(uri, sweep.name, f"tags.`nas.sweep_run_id` = '{meta['parent_run_id']}'")
        if stale:
            log.info("closed %d run(s) left running by the interrupted sweep", len(stale))
        return meta, True
    parent = tracking.create_run(uri, sweep.name, f"sweep-{sweep.name}",
                                 tags={"nas.kind": "sweep", "nas.sweep": sweep.name},
                                 params={"sweep": sweep.to_dict(), "points": [dataclasses.asdict(p) for p in points]})
    meta = {"config": sweep.to_dict(), "parent_run_id": parent, "warmups": {}}
    write(meta)
    return meta, False


def sweep_cluster(sweep: SweepConfig) -> ClusterSpec:
    """The workers of each of the sweep's runs (warm-ups, searches, retrains)."""
    return ClusterSpec(num_workers=sweep.workers_per_trial, cpus_per_worker=sweep.cpus_per_worker,
                       use_gpu=sweep.use_gpu, allow_autoscale=sweep.allow_autoscale)


def _run_warmups(sweep: SweepConfig, cfg: SearchConfig, uri: str, meta: dict, write: Callable[[dict], None],
                 seeds: list[int]) -> float:
    """One warm-up search per seed (shared by every trial of that seed); already finished ones are skipped."""
    total = 0.0
    for seed in seeds:
        done = meta["warmups"].get(str(seed))
        if done:
            total += done["worker_seconds"]
            continue
        spec = sweep_cluster(sweep).replace(
            storage_path=f"{meta['storage']}/searches", name=f"warmup-s{seed}", tracking_uri=uri,
            experiment=sweep.name, parent_run_id=meta["parent_run_id"],
            tags=(("nas.kind", "warmup"), ("nas.sweep", sweep.name), ("nas.sweep_run_id", meta["parent_run_id"]),
                  ("nas.seed", str(seed))))
        res = run_distributed_search(cfg.replace(seed=seed), spec, warmup_only=True)
        meta["warmups"][str(seed)] = {"state_uri": res.state_uri, "run_id": res.run_id,
                                      "worker_seconds": res.worker_seconds}
        write(meta)
        total += res.worker_seconds
        log.info("shared warm-up for seed %d: %.0f worker-seconds, state %s", seed, res.worker_seconds, res.state_uri)
    return total


def _param_space(sweep: SweepConfig, points: list[TrialPoint], ctx: TrialContext) -> tuple[dict, int]:
    from ray import tune

    if not sweep.grid[0].sampled:
        return {"point": tune.grid_search([dataclasses.asdict(p) for p in points]), "ctx": ctx.to_dict()}, 1
    ctx = dataclasses.replace(ctx, ranges={g.hardware: [g.distribution, g.low, g.high] for g in sweep.grid})
    seeds = list(sweep.seeds) or [ctx.default_seed]
    return {"hardware": tune.grid_search([g.hardware for g in sweep.grid]), "seed": tune.grid_search(seeds),
            "target": tune.sample_from(draw_target), "ctx": ctx.to_dict()}, sweep.grid[0].samples


def _tuner(sweep: SweepConfig, param_space: dict, samples: int, loc, uri: str):
    """A new Tuner, or the restored one when this sweep's Tune state exists (finished trials are kept)."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    # the tracking URI, credentials and all, reaches the trials through the object store, not the Tune config
    # that Tune writes to storage (params.json, result.json): the config's ``ctx`` holds it masked
    trainable = tune.with_resources(tune.with_parameters(sweep_trial, tracking_uri=uri), {"CPU": 0.01})
    fs = loc.fs if loc.is_s3 else None
    path = loc.path(f"{sweep.name}/{TUNE_NAME}")
    if tune.Tuner.can_restore(path, storage_filesystem=fs):
        log.info("resuming the sweep's Tune state at %s", path)
        return tune.Tuner.restore(path, trainable, resume_errored=True, storage_filesystem=fs), True
    return tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(num_samples=samples, max_concurrent_trials=sweep.max_concurrent_trials),
        run_config=tune.RunConfig(name=TUNE_NAME, storage_path=loc.path(sweep.name), storage_filesystem=fs,
                                  failure_config=tune.FailureConfig(max_failures=0), verbose=0,
                                  # Tune's automatic loggers are off (quiet_ray_env: their TensorBoard hints and
                                  # CSV warnings); each trial's result.json is kept, which Tune's result grid reads
                                  callbacks=[JsonLoggerCallback()]),
    ), False


def check_cluster(sweep: SweepConfig) -> None:
    """Resources a trial needs at once must exist (Ray Train retries an unplaceable worker group forever)."""
    check_resources(sweep.workers_per_trial, per_worker_resources(sweep.cpus_per_worker, sweep.use_gpu),
                    sweep.allow_autoscale)
    for g in sweep.grid:
        check_hardware_available(g.hardware)


def run_sweep(sweep: SweepConfig, address: str | None = None, num_cpus: int | None = None) -> SweepResult:
    """Run (or resume) ``sweep``: warm-up once, trials on Tune, fronts from MLflow logged to the parent run."""
    t0 = time.time()
    cfg = base_config(sweep)
    info = hardware_info(sweep)
    points = resolve_points(sweep, info, cfg.seed, cfg.space)  # an unreachable target fails here, before compute
    uri = tracking.resolve_tracking_uri(sweep.tracking_uri)
    tracking.check_tracking_uri(uri)
    storage = check_storage(sweep.storage if "://" in sweep.storage else str(Path(sweep.storage).resolve()))
    loc = st.resolve(storage)
    read, write = _meta_io(storage, sweep.name)
    with ray_session(address, num_cpus):
        check_cluster(sweep)
        meta, resumed = _start_or_resume_parent(sweep, uri, read, write, points)
        meta["storage"] = f"{storage.rstrip('/')}/{sweep.name}"
        seeds = sorted({p.seed for p in points} | set(sweep.seeds) or {cfg.seed})
        warm_ws = _run_warmups(sweep, cfg, uri, meta, write, seeds) if sweep.shared_warmup else 0.0
        n_trials = len(points) or len(sweep.grid) * sweep.grid[0].samples * len(seeds)
        ctx = TrialContext(
            name=sweep.name, search=cfg.to_dict(), tracking_uri=redact(uri), parent_run_id=meta["parent_run_id"],
            storage=meta["storage"], cluster=sweep_cluster(sweep),
            trials_per_warmup=max(1, n_trials // max(1, len(seeds))), default_seed=cfg.seed,
            warmups=meta["warmups"] if sweep.shared_warmup else {},
            tables={g.hardware: g.table for g in sweep.grid if g.table},
            runtimes={h: i.runtime for h, i in info.items()},
            fronts={g.hardware: list(g.front) for g in sweep.grid if g.front}, measure_rounds=sweep.measure_rounds,
            retrain=sweep.retrain.to_dict() if sweep.retrain else None)
        space, samples = _param_space(sweep, points, ctx)
        tuner, restored = _tuner(sweep, space, samples, loc, uri)
        grid = tuner.fit()
    trials, errors = [], []
    for r in grid:
        if r.error is not None:
            errors.append(redact(str(r.error).splitlines()[0]) if str(r.error) else type(r.error).__name__)
        elif r.metrics and r.metrics.get("trial_done"):
            trials.append({k: v for k, v in r.metrics.items() if not isinstance(v, dict)})
    parent = meta["parent_run_id"]
    pareto, pareto_dir = {}, ""
    if trials:
        with tempfile.TemporaryDirectory() as d:
            rep = compare_fronts(uri, [sweep.name], Path(d) / "pareto", f"sweep {sweep.name}")
            tracking.log_artifact_files(uri, parent, {f"pareto/{p.name}": p.read_bytes()
                                                      for p in [*rep.plots, rep.json_path]})
            pareto = rep.summary
        pareto_dir = "pareto"
        for hw, s in pareto.items():
            tracking.log_metrics(uri, parent, {f"hypervolume.{hw}": s["series"][sweep.name]["hypervolume"]},
                                 step=len(trials))
    wall = time.time() - t0
    result = SweepResult(sweep.name, uri, parent, tuple(trials), tuple(errors), warm_ws, wall,
                         resumed or restored, pareto, pareto_dir)
    tracking.log_metrics(uri, parent, {"trials_finished": len(trials), "trials_failed": len(errors),
                                       "sweep_worker_seconds": result.worker_seconds, "sweep_wall_seconds": wall,
                                       "warmup_worker_seconds": warm_ws}, step=len(trials))
    tracking.end_run(uri, parent, "FAILED" if errors else "FINISHED")
    return result
