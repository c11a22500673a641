"""The sweep driver: checks, one shared warm-up per seed, the Tune sweep (or its resumption), Pareto fronts.

Order matters for cost: everything that can fail cheaply (config, tables, targets against the space's reachable
range, tracking, storage, cluster resources) fails before any training; the warm-up runs once.

The sweep's own record is plain JSON: ``sweep-meta.json`` in the sweep's storage folder (and a copy,
``sweep-record.json``, on the MLflow parent run) holds its config, its points (a sampled grid's targets are drawn
once, here), the warm-ups, the parent run and each finished point with its final report, written by the driver as
each trial reports it. A resume validates that record, skips the finished points (their reports are reused), and
runs only the others on a fresh ``tune.Tuner`` whose experiment lives in a private temporary folder of the driver:
nothing of Tune's (``tuner.pkl``, experiment state, pickled errors) is ever read from the sweep's storage, so
whoever can write that storage cannot run code in the driver. Each trial's search and retrain resume from their
own ``weights_only`` checkpoints (stable run names, ``sweep/trial.py``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import storage as st
from orchestrator import mlflow_links, registry, tracking
from orchestrator.cluster_checks import check_resources, check_storage, per_worker_resources
from orchestrator.console import progress_log
from orchestrator.lease import acquire_lease, takeover_line
from orchestrator.ray_session import ray_session
from orchestrator.ray_train import ClusterSpec
from orchestrator.redact import redact
from orchestrator.search.config import SearchConfig
from orchestrator.search.jobs import run_distributed_search
from orchestrator.sweep.config import (SweepConfig, TrialPoint, base_config, draw_points, front_budgets, hardware_info,
                                       resolve_points)
from orchestrator.sweep.measure import check_hardware_available
from orchestrator.sweep.report import compare_fronts
from orchestrator.sweep.trial import TrialContext, sweep_trial

__all__ = ["SweepResult", "run_sweep", "sweep_cluster", "check_cluster", "check_all_ran", "SweepInterrupted", "META_FILE", "RECORD_ARTIFACT"]

log = logging.getLogger(__name__)

META_FILE = "sweep-meta.json"  # the sweep's record in its storage folder (JSON only)
RECORD_ARTIFACT = "sweep-record.json"  # the same record, as an artifact of the sweep's MLflow parent run
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
    registered: dict = field(default_factory=dict)  # hardware -> models:/ URIs of its front's registered nets

    @property
    def worker_seconds(self) -> float:
        """Compute of the whole sweep: the warm-up(s) plus every trial's search, measurement and retrain."""
        return self.warmup_worker_seconds + sum(
            t.get("search_worker_seconds", 0) + t.get("measure_seconds", 0) + t.get("retrain_worker_seconds", 0)
            for t in self.trials)


def _meta_io(storage: str, name: str):
    loc = st.resolve(storage)
    rel = f"{name}/{META_FILE}"

    def read() -> dict | None:
        if not st.exists(loc, rel):
            return None
        try:
            meta = json.loads(st.read_bytes(loc, rel))
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"sweep {name!r}: its record {loc.uri_of(rel)} is not valid JSON; refusing to resume "
                             f"it: choose another name") from None
        if not isinstance(meta, dict):
            raise ValueError(f"sweep {name!r}: its record {loc.uri_of(rel)} is not a JSON object; refusing to "
                             f"resume it: choose another name")
        return meta

    write = lambda meta: st.publish_bytes(loc, rel, _record_bytes(meta))  # noqa: E731
    return read, write


def _record_bytes(meta: dict) -> bytes:
    return json.dumps(meta, indent=1, allow_nan=False).encode()


def _save_record(meta: dict, write: Callable[[dict], None], uri: str) -> None:
    """The record to storage (whole or not at all, durable locally), then its copy on the MLflow parent run (best
    effort: storage is what a resume reads)."""
    write(meta)
    try:
        tracking.log_artifact_files(uri, meta["parent_run_id"], {RECORD_ARTIFACT: _record_bytes(meta)})
    except Exception as e:  # the tracking server's own errors vary; the storage record is already durable
        log.warning("could not copy the sweep's record to MLflow: %s", st.one_line(e))


def _recorded_points(sweep: SweepConfig, meta: dict, resolved: list[TrialPoint],
                     seeds: list[int]) -> list[TrialPoint]:
    """The points a sweep was started with, from its record, checked against the config: a listed grid must
    resolve to the same points; a sampled grid's must lie in its ranges, with its seeds and samples count."""
    where = f"sweep {sweep.name!r} in {sweep.storage}"

    def bad(what: str) -> ValueError:
        return ValueError(f"{where}: its record {META_FILE} {what}; refusing to resume it: choose another name")

    if not isinstance(meta.get("parent_run_id"), str) or not isinstance(meta.get("warmups", {}), dict):
        raise bad("names no parent run")
    if "points" not in meta:  # a record written before points were recorded
        if sweep.grid[0].sampled:
            raise bad("holds no points")
        return resolved
    raw, points = meta["points"], []
    if not isinstance(raw, list):
        raise bad("holds no list of points")
    for p in raw:
        if (not isinstance(p, dict) or set(p) != {"hardware", "target", "seed"} or not isinstance(p["hardware"], str)
                or isinstance(p["target"], bool) or not isinstance(p["target"], (int, float))
                or not math.isfinite(p["target"]) or isinstance(p["seed"], bool) or not isinstance(p["seed"], int)):
            raise bad(f"holds a malformed point {str(p)[:200]}")
        points.append(TrialPoint(p["hardware"], float(p["target"]), p["seed"]))
    if not sweep.grid[0].sampled:
        if points != resolved:
            raise bad("holds other points than its grid resolves to (did a latency table change?)")
        return points
    grids = {g.hardware: g for g in sweep.grid}
    for p in points:
        g = grids.get(p.hardware)
        if g is None or p.seed not in seeds or not g.low - 1e-6 <= p.target <= g.high + 1e-6:
            raise bad(f"holds a point outside the grid: {p.key}")
    if len(points) != len(sweep.grid) * sweep.grid[0].samples * len(seeds) or len({p.key for p in points}) != len(
            points):
        raise bad("holds another number of points than the grid samples")
    return points


_REPORT_TEXT = ("hardware", "unit", "arch")  # what the sweep's summary reads of a recorded report, by type
_REPORT_NUMBERS = ("target", "measured_latency", "search_worker_seconds", "measure_seconds")
_REPORT_OPTIONAL = ("retrain_worker_seconds", "val_accuracy", "supernet_valid_accuracy")


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_finished(sweep: SweepConfig, meta: dict, points: list[TrialPoint]) -> None:
    """The record's finished points (key -> final report) must be among its points, each report with the values
    the sweep's summary reads."""
    done = meta.setdefault("finished", {})
    keys = {p.key for p in points}

    def ok(key: str, r: object) -> bool:
        return (key in keys and isinstance(r, dict) and all(isinstance(r.get(k), str) for k in _REPORT_TEXT)
                and all(_is_number(r.get(k)) for k in _REPORT_NUMBERS)
                and all(r.get(k) is None or _is_number(r[k]) for k in _REPORT_OPTIONAL))

    if not isinstance(done, dict) or not all(ok(k, r) for k, r in done.items()):
        raise ValueError(f"sweep {sweep.name!r} in {sweep.storage}: its record {META_FILE} holds a finished point "
                         f"that is not one of its points or has no report; refusing to resume it: choose another "
                         f"name")


def _check_record(sweep: SweepConfig, meta: dict, resolved: list[TrialPoint], seeds: list[int]) -> list[TrialPoint]:
    """A resumed sweep's record must be of this config, with its points and finished reports (``_recorded_points``,
    ``_check_finished``); returns its points."""
    if meta.get("config") != json.loads(json.dumps(sweep.to_dict())):  # as stored: tuples become lists
        raise ValueError(f"sweep {sweep.name!r} in {sweep.storage} was started with another config; "
                         f"refusing to resume it: choose another name")
    points = _recorded_points(sweep, meta, resolved, seeds)
    _check_finished(sweep, meta, points)
    return points


def _start_or_resume_parent(sweep: SweepConfig, uri: str, meta: dict | None, recorded: list[TrialPoint] | None,
                            write, resolved: list[TrialPoint], seeds: list[int]) -> tuple[dict, list[TrialPoint], bool]:
    """The sweep's record and MLflow parent run: created once (a sampled grid's points drawn then), reused on
    resume (``meta``, the stored record, with ``recorded``, its points as ``_check_record`` checked them; its stale
    children closed as KILLED). Returns (record, points, resumed)."""
    if meta is not None:
        points = recorded or []
        meta["points"] = [dataclasses.asdict(p) for p in points]
        stale = tracking.mark_stale_runs(uri, sweep.name, f"tags.`nas.sweep_run_id` = '{meta['parent_run_id']}'")
        if stale:
            log.info("closed %d run(s) left running by the interrupted sweep", len(stale))
        return meta, points, True
    points = draw_points(sweep, seeds) if sweep.grid[0].sampled else resolved
    parent = tracking.create_run(uri, sweep.name, f"sweep-{sweep.name}",
                                 tags={"nas.kind": "sweep", "nas.sweep": sweep.name},
                                 params={"sweep": sweep.to_dict(), "points": [dataclasses.asdict(p) for p in points]})
    meta = {"config": sweep.to_dict(), "parent_run_id": parent, "warmups": {},
            "points": [dataclasses.asdict(p) for p in points], "finished": {}}
    _save_record(meta, write, uri)
    return meta, points, False


def sweep_cluster(sweep: SweepConfig) -> ClusterSpec:
    """The workers of each of the sweep's runs (warm-ups, searches, retrains)."""
    return ClusterSpec(num_workers=sweep.workers_per_trial, cpus_per_worker=sweep.cpus_per_worker,
                       use_gpu=sweep.use_gpu, allow_autoscale=sweep.allow_autoscale,
                       resume=True)  # a sweep's runs resume when the sweep is run again


def _run_warmups(sweep: SweepConfig, cfg: SearchConfig, uri: str, meta: dict, write: Callable[[dict], None],
                 seeds: list[int], progress: bool = True) -> float:
    """One warm-up search per seed (shared by every trial of that seed); already finished ones are skipped."""
    total = 0.0
    for seed in seeds:
        done = meta["warmups"].get(str(seed))
        if done:
            total += done["worker_seconds"]
            continue
        spec = sweep_cluster(sweep).replace(
            storage_path=f"{meta['storage']}/searches", name=f"warmup-s{seed}", tracking_uri=uri, progress=progress,
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


def _final_report(result: dict) -> dict:
    """A trial's final report as the record keeps it: its own values, without Tune's bookkeeping."""
    from ray.tune.result import AUTO_RESULT_KEYS

    tune_keys = {*AUTO_RESULT_KEYS, "trial_id", "experiment_tag", "done", "timesteps_total", "episodes_total",
                 "should_checkpoint", "trial_done"}
    return {k: v for k, v in result.items() if k not in tune_keys and not isinstance(v, dict)
            and (not isinstance(v, float) or math.isfinite(v))}


def _accuracy(report: dict) -> float | None:
    acc = report.get("val_accuracy", report.get("supernet_valid_accuracy"))
    return acc if _is_number(acc) else None


def _point_text(point: dict) -> str:
    return f"{point['hardware']} target {float(point['target']):.4g}" + (
        f" seed {point['seed']}" if point.get("seed") is not None else "")


class SweepProgress:
    """The sweep's progress on the console, one line (``console.progress_log``) as each trial starts, finishes or
    fails: trials done of all, running, failed; the finished trial's measured latency and top-1; and the best so
    far per hardware: the finished trial with the highest top-1 among those whose measured latency is within
    their target (a resumed sweep's finished points count)."""

    def __init__(self, name: str, total: int, finished: dict[str, dict]) -> None:
        self.name, self.total = name, total
        self.reports = list(finished.values())  # the final reports so far, resumed ones included
        self.running: set[str] = set()
        self.failed = 0

    def _counts(self) -> str:
        return (f"sweep {self.name}: {len(self.reports)}/{self.total} trials done, {len(self.running)} running, "
                f"{self.failed} failed")

    def best(self) -> dict[str, dict]:
        """Hardware -> its best finished report (highest top-1 within target)."""
        out: dict[str, dict] = {}
        for r in self.reports:
            acc = _accuracy(r)
            if acc is None or not r.get("measured_latency", math.inf) <= r.get("target", -math.inf):
                continue
            if r["hardware"] not in out or acc > _accuracy(out[r["hardware"]]):
                out[r["hardware"]] = r
        return out

    def _best_text(self) -> str:
        best = self.best()
        hws = sorted({r["hardware"] for r in self.reports})
        return "; ".join(f"best {hw}: {best[hw]['measured_latency']:.4g} {best[hw]['unit']} @ top-1 "
                         f"{_accuracy(best[hw]):.3f}" if hw in best else f"best {hw}: none within target"
                         for hw in hws)

    def started(self, trial_id: str, point: dict) -> None:
        self.running.add(trial_id)
        progress_log.info("%s | started %s", self._counts(), _point_text(point))

    def finished(self, trial_id: str, point: dict, report: dict) -> None:
        self.running.discard(trial_id)
        self.reports.append(report)
        acc = _accuracy(report)
        measured = report.get("measured_latency")
        within = "" if not _is_number(measured) else (
            " (within target)" if measured <= float(point["target"]) else " (over target)")
        got = (f"{measured:.4g} {report.get('unit', '')} measured{within}" if _is_number(measured)
               else "no measurement")
        extra = report.get("front_points")  # nets it derived under the grid's front budgets and retrained
        fronts = f" (+{extra} front net{'s' if extra != 1 else ''})" if _is_number(extra) and extra else ""
        progress_log.info("%s | finished %s: %s, top-1 %s%s | %s", self._counts(), _point_text(point), got,
                          "-" if acc is None else f"{acc:.3f}", fronts, self._best_text())

    def errored(self, trial_id: str, point: dict) -> None:
        self.running.discard(trial_id)
        self.failed += 1
        progress_log.info("%s | failed %s", self._counts(), _point_text(point))


def _recorder(on_done: Callable[[dict, dict], None], progress: SweepProgress | None = None):
    """A Tune callback, run by the driver: ``on_done(point, report)`` as each trial makes its final report, and the
    sweep's progress lines as trials start, finish and fail."""
    from ray import tune

    class FinishedPoints(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            if progress is not None:
                progress.started(trial.trial_id, trial.config["point"])

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            if result.get("trial_done"):
                on_done(trial.config["point"], result)
                if progress is not None:
                    progress.finished(trial.trial_id, trial.config["point"], _final_report(result))

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            if progress is not None:
                progress.errored(trial.trial_id, trial.config["point"])

    return FinishedPoints()


def _run_points(sweep: SweepConfig, todo: list[TrialPoint], ctx: TrialContext, uri: str,
                on_done: Callable[[dict, dict], None], progress: SweepProgress | None = None) -> list[str]:
    """The unfinished points on a fresh Tuner, whose experiment lives in a new private temporary folder (never the
    sweep's storage, never restored); returns the failed trials' lines."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    # the tracking URI, credentials and all, reaches the trials through the object store, not the Tune config
    # that Tune writes (params.json, result.json): the config's ``ctx`` holds it masked
    trainable = tune.with_resources(tune.with_parameters(sweep_trial, tracking_uri=uri), {"CPU": 0.01})
    tune_dir = tempfile.mkdtemp(prefix=f"nas-sweep-{sweep.name}-")
    try:
        tuner = tune.Tuner(
            trainable,
            param_space={"point": tune.grid_search([dataclasses.asdict(p) for p in todo]), "ctx": ctx.to_dict()},
            tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=sweep.max_concurrent_trials),
            run_config=tune.RunConfig(name=TUNE_NAME, storage_path=tune_dir,
                                      failure_config=tune.FailureConfig(max_failures=0), verbose=0,
                                      # Tune's automatic loggers are off (quiet_ray_env: their TensorBoard hints and
                                      # CSV warnings); each trial's result.json is kept, which Tune's result grid
                                      # reads (from this folder)
                                      callbacks=[JsonLoggerCallback(), _recorder(on_done, progress)]),
        )
        tune_log = logging.getLogger("ray.tune.tune")
        tune_log.addFilter(_tune_interrupt_notices)
        try:
            grid = tuner.fit()
        finally:
            tune_log.removeFilter(_tune_interrupt_notices)
        return [redact(str(r.error).splitlines()[0]) if str(r.error) else type(r.error).__name__
                for r in grid if r.error is not None]
    finally:
        shutil.rmtree(tune_dir, ignore_errors=True)


def _tune_interrupt_notices(record: logging.LogRecord) -> bool:
    """Tune's notices on a Ctrl-C point at ``Tuner.restore`` of its private temp folder, which a sweep never uses
    (the same command resumes it; ``check_all_ran`` says so): kept off the console."""
    msg = record.getMessage()
    return not any(s in msg for s in ("Stop signal received", "Experiment has been interrupted", "Tuner.restore"))


class SweepInterrupted(RuntimeError):
    """Tune returned with points neither finished nor failed: the sweep was stopped (Ctrl-C, SIGTERM)."""


def check_all_ran(name: str, points: list[TrialPoint], finished: dict, errors: list[str]) -> None:
    """Every point finished or failed; otherwise ``SweepInterrupted`` (Tune catches a Ctrl-C and returns as if the
    sweep had ended: without this check a stopped sweep would exit 0 with its fronts from the points that ran)."""
    unfinished = [p for p in points if p.key not in finished]
    if len(unfinished) > len(errors):
        raise SweepInterrupted(f"sweep {name} stopped with {len(unfinished) - len(errors)} of {len(points)} point(s) "
                               f"not run to the end (interrupted); run the same command to resume it")


def check_cluster(sweep: SweepConfig) -> None:
    """Resources a trial needs at once must exist (Ray Train retries an unplaceable worker group forever)."""
    check_resources(sweep.workers_per_trial, per_worker_resources(sweep.cpus_per_worker, sweep.use_gpu),
                    sweep.allow_autoscale)
    for g in sweep.grid:
        check_hardware_available(g.hardware)


def _describe_parent(uri: str, parent: str, name: str) -> None:
    """The parent run's description and the experiment's kind: MLflow opens on the sweep's runs (best effort)."""
    try:
        mlflow_links.mark_model_development(uri, tracking.client(uri).get_run(parent).info.experiment_id)
        mlflow_links.describe_run(uri, parent, f"Sweep {name}: its searches, their retrains and front points are "
                                               f"nested below; fronts in the artifacts' pareto/ folder.")
    except Exception as e:  # noqa: BLE001 (the tracking server's own errors vary; the sweep goes on)
        log.warning("could not describe the sweep's parent run: %s", st.one_line(e))


def _fronts_to_mlflow(uri: str, parent: str, name: str, pareto: dict) -> dict:
    """The fronts as MLflow tables on the parent run; each hardware's non-dominated nets registered as versions
    of ``<sweep>-<hardware>``. Returns hardware -> their ``models:/`` URIs."""
    mlflow_links.log_front_tables(uri, parent, pareto, name)
    return registry.register_front(uri, name, pareto)


def run_sweep(sweep: SweepConfig, address: str | None = None, num_cpus: int | None = None,
              progress: bool = True) -> SweepResult:
    """Run (or resume) ``sweep`` holding the lease on its folder (``lease``): a concurrent start of the same sweep
    is refused before it touches the live sweep's runs; a dead driver's lease is taken over, and the take-over
    tagged on the sweep's MLflow run."""
    folder = f"{sweep.storage.rstrip('/')}/{sweep.name}" if "://" in sweep.storage else \
        str(Path(sweep.storage).resolve() / sweep.name)
    with acquire_lease(folder, "sweep") as lease:
        result = _run_sweep(sweep, address, num_cpus, progress)
        if lease.takeover:
            tracking.set_tags(result.tracking_uri, result.parent_run_id,
                              {"nas.lease_takeover": takeover_line(lease.takeover)})
        return result


def _run_sweep(sweep: SweepConfig, address: str | None = None, num_cpus: int | None = None,
               progress: bool = True) -> SweepResult:
    """Run (or resume) ``sweep``: warm-up once, trials on Tune, fronts from MLflow logged to the parent run.
    ``progress``: the warm-up's progress bar and the sweep's progress lines (``SweepProgress``)."""
    t0 = time.time()
    cfg = base_config(sweep)
    info = hardware_info(sweep)
    points = resolve_points(sweep, info, cfg.seed, cfg.space)  # an unreachable target fails here, before compute
    uri = tracking.resolve_tracking_uri(sweep.tracking_uri)
    tracking.check_tracking_uri(uri)
    storage = check_storage(sweep.storage if "://" in sweep.storage else str(Path(sweep.storage).resolve()))
    read, write = _meta_io(storage, sweep.name)
    seeds = sorted(set(sweep.seeds) or {cfg.seed})
    # a record of another config or points is refused before Ray starts (seconds); read once: the lease is held
    stored = read()
    recorded = _check_record(sweep, stored, points, seeds) if stored is not None else None
    with ray_session(address, num_cpus):
        check_cluster(sweep)
        meta, points, resumed = _start_or_resume_parent(sweep, uri, stored, recorded, write, points, seeds)
        meta["storage"] = f"{storage.rstrip('/')}/{sweep.name}"
        _describe_parent(uri, meta["parent_run_id"], sweep.name)
        warm_ws = _run_warmups(sweep, cfg, uri, meta, write, seeds, progress) if sweep.shared_warmup else 0.0
        ctx = TrialContext(
            name=sweep.name, search=cfg.to_dict(), tracking_uri=redact(uri), parent_run_id=meta["parent_run_id"],
            storage=meta["storage"], cluster=sweep_cluster(sweep),
            trials_per_warmup=max(1, len(points) // max(1, len(seeds))), default_seed=cfg.seed,
            warmups=meta["warmups"] if sweep.shared_warmup else {},
            tables={g.hardware: g.table for g in sweep.grid if g.table},
            runtimes={h: i.runtime for h, i in info.items()},
            fronts={g.hardware: list(front_budgets(g, info[g.hardware])) for g in sweep.grid
                    if g.front or g.front_relative}, measure_rounds=sweep.measure_rounds,
            retrain=sweep.retrain.to_dict() if sweep.retrain else None)
        finished = meta["finished"]
        todo = [p for p in points if p.key not in finished]
        if resumed:
            log.info("resuming sweep %s: %d of %d point(s) finished, %d to run", sweep.name, len(points) - len(todo),
                     len(points), len(todo))

        def record(point: dict, result: dict) -> None:
            finished[TrialPoint(point["hardware"], float(point["target"]), int(point["seed"])).key] = \
                _final_report(result)
            try:
                _save_record(meta, write, uri)
            except OSError as e:  # written again once the trials are done, where a failure stops the sweep
                log.warning("could not record a finished point yet: %s", st.one_line(e))

        lines = SweepProgress(sweep.name, len(points), finished) if progress else None
        errors = _run_points(sweep, todo, ctx, uri, record, lines) if todo else []
        _save_record(meta, write, uri)
        try:
            check_all_ran(sweep.name, points, finished, errors)
        except SweepInterrupted:
            tracking.end_run(uri, meta["parent_run_id"], "KILLED")  # a resume opens it again
            raise
    trials = [finished[p.key] for p in points if p.key in finished]
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
    registered = _fronts_to_mlflow(uri, parent, sweep.name, pareto) if pareto else {}
    wall = time.time() - t0
    result = SweepResult(sweep.name, uri, parent, tuple(trials), tuple(errors), warm_ws, wall, resumed, pareto,
                         pareto_dir, registered)
    tracking.log_metrics(uri, parent, {"trials_finished": len(trials), "trials_failed": len(errors),
                                       "sweep_worker_seconds": result.worker_seconds, "sweep_wall_seconds": wall,
                                       "warmup_worker_seconds": warm_ws}, step=len(trials))
    tracking.end_run(uri, parent, "FAILED" if errors else "FINISHED")
    return result
