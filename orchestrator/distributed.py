"""Data-parallel supernet search on Ray Train, with architecture parameters bit-identical on every rank.

Every rank samples the same paths without communicating (paths are a pure function of seed and step, see
``search.sampling``), takes its slice of each global batch, and all-reduces (averages) the active path's
weight gradients and α's gradient before every optimiser step, so every rank applies the same update. A cheap
periodic check gathers every rank's α and sampled-path fingerprints and fails the run loudly (``RanksDiverged``,
never retried) if they ever differ.

The driver checks storage, tracking and cluster resources before any worker starts, creates the MLflow run (or
continues the one of an interrupted driver, recorded in the run's folder), and logs the result; rank 0 alone
logs metrics (through a ``tracking.MetricSink``, so a slow or absent tracking server never holds the other ranks)
and writes checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from orchestrator.search.config import SearchConfig

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "search_state.pt"
META_FILE = "search-meta.json"


@dataclass(frozen=True)
class RunSpec:
    """Where and how a search runs on the cluster (the search itself is the ``SearchConfig``)."""

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    storage_path: str = "runs"  # local path (one node), NFS, or s3://bucket/prefix
    name: str | None = None  # the run's folder under storage_path; the same name resumes it
    max_failures: int = 2  # worker-group restarts after a worker or node failure
    consistency_every: int = 10  # weight steps between α-consistency checks across ranks
    tracking_uri: str | None = None  # default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the cwd
    experiment: str = "nas-search"
    parent_run_id: str | None = None  # MLflow parent (a sweep's trial) to nest under
    tags: tuple[tuple[str, str], ...] = ()
    allow_autoscale: bool = False  # skip the up-front resource check on autoscaling clusters
    progress: bool = True  # rank 0's progress bar on the driver's console (a sweep's trials draw none)
    inject_failure_at_step: int | None = None  # fault injection: rank 1 kills itself once at this step
    inject_divergence_at_step: int | None = None  # fault injection: rank 1 perturbs its α once at this step
    pause_at_steps: tuple[int, ...] = ()  # fault injection: every rank waits once at each step (see pause_once)
    warm_start: str | None = None  # URI of a shared warm-up state (search_state.pt) to fork a fresh run from
    warmup_only: bool = False  # stop at the end of warm-up: the run that produces a sweep's shared warm-up

    def __post_init__(self) -> None:
        from orchestrator.cluster_checks import check_worker_shape

        check_worker_shape(self.num_workers, self.cpus_per_worker)
        if self.max_failures < 0:
            raise ValueError(f"max_failures: must be 0 or more, got {self.max_failures}")
        if self.consistency_every < 1:
            raise ValueError(f"consistency_every: must be at least 1, got {self.consistency_every}")
        if any(s < 1 for s in self.pause_at_steps):
            raise ValueError(f"pause_at_steps: steps must be at least 1, got {list(self.pause_at_steps)}")


def default_run_name(cfg: SearchConfig) -> str:
    """A folder-safe name from the space (its variant too), hardware, target and seed."""
    import re

    space = re.sub(r"[^A-Za-z0-9._-]+", "-", cfg.search_space.name).strip("-")
    return f"search-{space}-{cfg.hardware}-t{cfg.target:g}-s{cfg.seed}"


# ---------------------------------------------------------------------------------------------------- consistency
class RanksDiverged(RuntimeError):
    """Ranks no longer run one search (α or the sampled paths differ). Never retried silently."""


def check_consistency(comm, alpha_fp: str, path_fp: str, step: int) -> list[str]:
    """Gather every rank's α and path fingerprints; raise ``RanksDiverged`` naming the ranks that differ."""
    got = comm.gather((alpha_fp, path_fp))
    for what, i in (("architecture parameters", 0), ("sampled paths", 1)):
        values = [g[i] for g in got]
        if len(set(values)) != 1:
            odd = [r for r, v in enumerate(values) if v != values[0]]
            raise RanksDiverged(f"{what} diverged across ranks at step {step}: rank(s) {odd} differ from rank 0 "
                                f"({values[0][:12]} vs {values[odd[0]][:12]})")
    return [g[0] for g in got]


# ---------------------------------------------------------------------------------------------------- the workers
def report_checkpoint(metrics: dict, files: dict[str, Any] | None) -> None:
    """Report a checkpoint (rank 0 passes its files: ``.pt`` names get ``torch.save``, others JSON; the other
    ranks pass None), then wait until Ray Train's controller has registered it.

    ``ray.train.report`` only queues the result on the worker; the controller registers the checkpoint when it
    next polls the workers. A worker that dies before that poll (a kill soon after a report) used to make the
    restarted group start from an older checkpoint or from none. ``get_all_reported_checkpoints(COMMITTED)``
    blocks every rank until the controller has processed this report, so a reported checkpoint is the one a
    restart resumes from."""
    import ray.train
    from ray.train import CheckpointConsistencyMode

    if files is None:
        ray.train.report(metrics, checkpoint=None)
    else:
        with tempfile.TemporaryDirectory() as d:
            for fname, content in files.items():
                if fname.endswith(".pt"):
                    torch.save(content, Path(d) / fname)
                else:
                    (Path(d) / fname).write_text(json.dumps(content))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
    ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)


FAULT_MARKER = "fault-injected.json"


def inject_fault_once(run_dir: str, rank: int, step: int) -> None:
    """Fault injection for tests: SIGKILL this worker, at most once per run. The marker is written to the run's
    storage (shared by every node) before the kill, so a restarted worker group never fires again, whether or
    not it found a checkpoint."""
    from orchestrator import storage as st

    loc = st.resolve(run_dir)
    if st.exists(loc, FAULT_MARKER):
        return
    st.publish_bytes(loc, FAULT_MARKER, json.dumps({"rank": rank, "step": step}).encode())
    log.warning("fault injection: rank %d kills itself at step %d", rank, step)
    os.kill(os.getpid(), signal.SIGKILL)


DIVERGENCE_MARKER = "divergence-injected.json"


def inject_divergence_once(run_dir: str, state) -> None:
    """Fault injection for tests: move one allowed logit of this rank's α, at most once per run (a marker in the
    run's storage), so that a retried worker group would run clean: a test that still sees ``RanksDiverged``
    knows the run was not retried."""
    from orchestrator import storage as st

    loc = st.resolve(run_dir)
    if st.exists(loc, DIVERGENCE_MARKER):
        return
    st.publish_bytes(loc, DIVERGENCE_MARKER, json.dumps({"step": state.step}).encode())
    log.warning("fault injection: this rank's α diverges at step %d", state.step)
    with torch.no_grad():
        state.logits.alpha[tuple(state.logits.mask.nonzero()[0].tolist())] += 0.5


PAUSE_LIMIT_S = 300.0  # the longest a pause waits for its release


def pause_once(run_dir: str, comm, step: int, limit_s: float = PAUSE_LIMIT_S) -> bool:
    """Fault injection for tests: every rank waits at ``step``, once per run, so that a test can do its damage (remove
    a node, stop a server, kill the driver) while the search stands at a known step, every checkpoint before it
    committed. Rank 0 writes ``paused-<step>.json`` to the run's storage (naming each rank's node) when the wait
    begins and waits until the storage holds ``release-<step>`` or ``limit_s`` passed; the others wait for rank 0.
    The marker stays, so a restarted worker group or driver does not pause there again. Collective."""
    import ray

    from orchestrator import storage as st

    loc = st.resolve(run_dir)
    marker = f"paused-{step}.json"
    nodes = comm.gather(ray.get_runtime_context().get_node_id())
    fire = comm.rank == 0 and not st.exists(loc, marker)
    if fire:
        st.publish_bytes(loc, marker, json.dumps({"step": step, "nodes": nodes}).encode())
        log.warning("fault injection: the search pauses at step %d", step)
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline and not st.exists(loc, f"release-{step}"):
            time.sleep(0.25)
    return bool(comm.gather(fire)[0])  # the other ranks wait here for rank 0


def seed_rank_rng(seed: int, rank: int) -> None:
    """A fresh start seeds each rank's global generator from (seed, rank), so that per-rank random draws (dropout,
    augmentation outside the data feed) differ between ranks, as between the samples of one global batch, and
    repeat from run to run. (Every Python process starts torch from the same default seed.) A resumed rank
    restores its own saved state instead."""
    import hashlib

    digest = hashlib.sha256(f"{seed}/rank-rng/{rank}".encode()).digest()
    torch.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def load_state_uri(uri: str) -> dict:
    """A search state saved by a checkpoint (``.../search_state.pt``), from a local path or ``s3://``; loaded
    with ``weights_only=True``, so a tampered file is refused and its payload never runs."""
    from orchestrator.state_io import load_state
    from orchestrator.storage import read_uri

    return load_state(read_uri(uri), "search state", name=uri)


def worker_runtime(use_gpu: bool, precision: str, channels_last: bool, threads: int):
    """The runtime of this Train worker: its device (the GPU Ray assigned it, or the CPU), precision and the
    process group Ray Train initialised (gloo on CPUs, NCCL on GPUs)."""
    from orchestrator.train.runtime import DistComm, Precision, Runtime

    torch.set_num_threads(max(1, threads))
    if use_gpu:
        from ray.train.torch import get_device

        device = get_device()
    else:
        device = torch.device("cpu")
    return Runtime(device=device, precision=Precision(precision, channels_last), comm=DistComm())


class RankZeroBar:
    """Rank 0's progress bar, drawn on the driver's console by Ray (``ray.experimental.tqdm_ray``)."""

    def __init__(self, total: int, done: int, desc: str) -> None:
        from ray.experimental.tqdm_ray import tqdm

        self.bar, self.desc = tqdm(desc=desc, total=total, unit="step"), desc
        self.bar.update(done)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def set_postfix(self, **values: Any) -> None:
        self.bar.set_description(f"{self.desc} " + " ".join(f"{k}={v}" for k, v in values.items()))

    def close(self) -> None:
        self.bar.close()
        # The closing state is a line on this worker's stdout, which Ray forwards to the driver; Ray Train ends the
        # worker soon after, so do not leave it in the buffer. (Ray's driver can still keep drawing a finished bar:
        # a sweep's trials draw none, see RunSpec.progress.)
        sys.stdout.flush()


def restored_state(file: str, what: str) -> dict | None:
    """The state in this run's latest reported checkpoint (``weights_only``), or None on a fresh start."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    return None if ckpt is None else checkpoint_file_state(ckpt, file, what)


def checkpoint_file_state(ckpt: Any, file: str, what: str) -> dict:
    """Load one file of a Ray ``Checkpoint`` straight from its filesystem (local or S3) into memory.

    Not through ``Checkpoint.as_directory()``: the ranks of a node share its temporary folder, and a rank that
    arrives after another rank's download has finished downloads again into the same files while that rank may
    still be reading them (``ray/train/_checkpoint.py``, ``to_directory``, Ray 2.60). A worker group restarted
    after a node loss read such a half-rewritten ``search_state.pt`` and was refused as corrupt."""
    from orchestrator.state_io import load_state
    from orchestrator.storage import storage_error

    path = f"{ckpt.path.rstrip('/')}/{file}"
    try:
        with ckpt.filesystem.open_input_stream(path) as f:
            data = f.read()
    except OSError as e:
        raise storage_error(e, f"{what} {path}") from None
    return load_state(data, what, name=path)


def train_loop_per_worker(config: dict) -> dict:
    """Runs on every Train worker: restore or start, search on this rank's device with averaged gradients,
    check that ranks agree, report checkpoints. Ranks that diverged return ``{"diverged": why}`` (every rank
    sees the same check) instead of raising, so that Ray Train does not restart them: a divergence is a bug to
    report, not a fault to retry."""
    import ray

    from orchestrator import tracking
    from orchestrator.search import resolve_latency, run_search
    from orchestrator.search.config import config_from_dict
    from orchestrator.search.state import alpha_fingerprint, path_fingerprint, state_dict

    cfg = config_from_dict(config["search"])
    spec = RunSpec(**{**config["spec"], "tags": tuple(map(tuple, config["spec"]["tags"])),
                      "pause_at_steps": tuple(config["spec"]["pause_at_steps"])})
    rt = worker_runtime(spec.use_gpu, cfg.precision, cfg.channels_last, int(config["threads"]))
    rank, world = rt.rank, rt.world
    run_id, uri = config["run_id"], config["tracking_uri"]

    resume = restored_state(CHECKPOINT_FILE, "checkpoint")
    if resume is not None:
        log.info("rank %d resumes at step %d", rank, resume["step"])
    else:
        seed_rank_rng(cfg.seed, rank)  # a warm start or a resume restores each rank's saved state over this
    restored = resume is not None
    warm = load_state_uri(spec.warm_start) if resume is None and spec.warm_start else None
    checks: list[tuple[int, list[str]]] = []  # (step, per-rank α fingerprints) of every consistency check
    sink = tracking.MetricSink(uri, run_id) if rank == 0 else None
    # a resumed group replays the steps after its checkpoint: those already recorded are not logged twice
    logged = tracking.logged_steps(uri, run_id, "entropy") if sink is not None and restored else set()
    odd = min(1, world - 1)  # the rank that fault injection hits

    def consistent(state) -> list[str]:
        fps = check_consistency(rt.comm, alpha_fingerprint(state), path_fingerprint(state.paths), state.step)
        state.paths.clear()
        checks.append((state.step, fps))
        return fps

    def after_step(state) -> None:
        if spec.inject_divergence_at_step == state.step and rank == odd and world > 1:
            inject_divergence_once(config["run_dir"], state)
        if state.step % spec.consistency_every == 0:
            consistent(state)
        fail = spec.inject_failure_at_step
        if fail is not None and rank == odd and state.step >= fail:
            inject_fault_once(config["run_dir"], rank, state.step)
        if state.step in spec.pause_at_steps:
            pause_once(config["run_dir"], rt.comm, state.step)

    def on_step(state, row: dict) -> None:
        if sink is not None and state.step not in logged:
            metrics = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            sink.log(metrics, step=state.step)

    def checkpoint(state) -> None:
        fps = consistent(state)
        saved = state_dict(state)  # collective: BN statistics averaged, every rank's RNG gathered
        metrics = {"step": state.step, "arch_step": state.arch_step, "alpha_fingerprints": fps,
                   "restored": restored, "world_size": world}
        files = {CHECKPOINT_FILE: saved, "alpha_fingerprints.json": {"step": state.step, "ranks": fps}}
        report_checkpoint(metrics, files if rank == 0 else None)

    try:
        result = run_search(cfg, rt=rt, on_step=on_step, after_step=after_step, checkpoint=checkpoint,
                            resume=resume, latency=resolve_latency(cfg), warm_start=warm,
                            warmup_only=spec.warmup_only,
                            progress=RankZeroBar if rank == 0 and spec.progress else False)
    except RanksDiverged as e:
        log.error("rank %d: %s", rank, e)
        return {"diverged": str(e), "consistency_checks": checks}
    out = result.to_dict()
    out["rank_fingerprints"] = rt.comm.gather(result.alpha_fingerprint)
    out["rank_archs"] = rt.comm.gather(result.arch)
    out["rank_nodes"] = rt.comm.gather(ray.get_runtime_context().get_node_id())
    out["consistency_checks"] = checks
    out["restored"] = restored
    out["resumed_from_step"] = resume["step"] if restored else None
    if sink is not None:
        sink.flush(force=True)
        out["tracking"] = sink.summary()
    return out


# ---------------------------------------------------------------------------------------------------- the driver
@dataclass(frozen=True)
class DistributedResult:
    search: dict  # SearchResult.to_dict() from rank 0, plus rank_fingerprints
    run_id: str
    tracking_uri: str
    storage_path: str
    name: str
    checkpoint_path: str | None
    worker_seconds: float
    wall_seconds: float

    @property
    def state_uri(self) -> str | None:
        """The final search state, e.g. a shared warm-up for ``RunSpec.warm_start``."""
        return f"{self.checkpoint_path}/{CHECKPOINT_FILE}" if self.checkpoint_path else None


def _run_meta(cfg: SearchConfig) -> dict:
    space = cfg.search_space
    return {"space": space.name, "space_fingerprint": space.fingerprint(), "config": cfg.to_dict()}


def check_existing_run(storage: str, name: str, cfg: SearchConfig) -> None:
    """Refuse to resume a run folder written by a search of another space (or another config)."""
    from orchestrator import storage as st

    loc = st.resolve(storage)
    meta = f"{name}/{META_FILE}"
    saved = json.loads(st.read_bytes(loc, meta)) if st.exists(loc, meta) else None
    mine = _run_meta(cfg)
    if saved is None:
        st.publish_bytes(loc, meta, json.dumps(mine, indent=1).encode())
        return
    if saved["space_fingerprint"] != mine["space_fingerprint"]:
        raise ValueError(
            f"run {name!r} in {storage} holds a checkpoint of space {saved['space']!r} "
            f"(fingerprint {saved['space_fingerprint']}), not {mine['space']!r} ({mine['space_fingerprint']}); "
            f"refusing to resume it: choose another --name"
        )
    if saved["config"] != mine["config"]:
        diff = sorted(k for k in set(saved["config"]) | set(mine["config"])
                      if saved["config"].get(k) != mine["config"].get(k))
        raise ValueError(f"run {name!r} in {storage} was started with another config (differs in "
                         f"{', '.join(diff)}); refusing to resume it: choose another --name")


RUN_FILE = "mlflow-run.json"


def tracked_run(storage: str, name: str, uri: str, experiment: str, create: Any) -> tuple[str, bool]:
    """The MLflow run of the run folder ``storage``/``name``: the run recorded there, reopened, when it is not
    FINISHED (its driver died: the same command continues the same run, as Ray Train continues its
    checkpoints), else a new one from ``create()``, recorded there. Returns (run id, whether it was reopened)."""
    from orchestrator import storage as st
    from orchestrator import tracking

    loc = st.resolve(storage)
    rel = f"{name}/{RUN_FILE}"
    if st.exists(loc, rel):
        saved = json.loads(st.read_bytes(loc, rel))
        if saved.get("tracking_uri") == uri and tracking.reopen_run(uri, saved["run_id"], experiment):
            return saved["run_id"], True
    run_id = create()
    st.publish_bytes(loc, rel, json.dumps({"tracking_uri": uri, "experiment": experiment, "run_id": run_id},
                                          indent=1).encode())
    return run_id, False


def log_tracking_summary(uri: str, run_id: str, summary: dict | None) -> dict[str, float]:
    """Send what rank 0 could not (with MlflowClient's own retries: the driver holds no rank) and return the
    tracking counters to record on the run: points sent late, metrics lost to the buffer's bound, seconds rank 0
    spent in tracking calls."""
    from orchestrator import tracking

    if not summary:
        return {}
    if summary["unsent"]:
        log.warning("sending %d metric(s) that rank 0 could not", len(summary["unsent"]))
        tracking.log_metric_rows(uri, run_id, summary["unsent"])
    return {"tracking_deferred_points": summary["deferred_points"],
            "tracking_dropped_metrics": summary["dropped_metrics"], "tracking_seconds": summary["seconds"]}


def failure_line(e: BaseException) -> str:
    """One line that names why a Train run failed: the first failing worker's own exception when there is one
    (Ray wraps it in a ``WorkerGroupError`` and a ``RayTaskError``), else the error's first line."""
    failures = getattr(e, "worker_failures", None)
    if failures:
        e = failures[min(failures)]
    while getattr(e, "cause", None) is not None and e.cause is not e:  # RayTaskError -> the user's exception
        e = e.cause
    text = str(e).strip()
    if not text:
        return type(e).__name__
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0]}" if not isinstance(e, (ValueError, OSError)) else lines[0]


def fit_tracked(what: str, name: str, loop: Any, loop_config: dict, *, num_workers: int, use_gpu: bool,
                per_worker: dict, storage: str, max_failures: int, keep: int, callbacks: Sequence[Any],
                uri: str, run_id: str) -> tuple[Any, float]:
    """Fit ``loop`` on Ray Train workers with checkpoints under ``storage``/``name``; on failure the MLflow run
    is marked FAILED and one line says why. Returns (Ray ``Result``, wall seconds)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from orchestrator import tracking
    from orchestrator.storage import resolve as resolve_storage

    loc = resolve_storage(storage)  # an explicit filesystem carries an S3-compatible endpoint to every worker
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=per_worker),
        run_config=RunConfig(name=name, storage_path=loc.root, storage_filesystem=loc.fs if loc.is_s3 else None,
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=keep), callbacks=list(callbacks)),
    )
    t0 = time.time()
    try:
        result = trainer.fit()
    except Exception as e:
        line = failure_line(e)
        tracking.set_tags(uri, run_id, {"nas.failure": line[:5000]})
        tracking.end_run(uri, run_id, "FAILED")
        raise RuntimeError(f"{what} {name!r} failed: {line}") from e
    if result.return_value is None:
        tracking.end_run(uri, run_id, "FAILED")
        raise RuntimeError(f"{what} {name!r} returned no result")
    return result, time.time() - t0


def run_distributed_search(cfg: SearchConfig, spec: RunSpec, callbacks: tuple = ()) -> DistributedResult:
    """Check everything that can be checked, then run the search on ``spec.num_workers`` Ray Train workers
    (joining Ray, or starting a private local one, through ``ray_session``).

    ``callbacks`` go to the trainer's RunConfig (e.g. ``TuneReportCallback()`` when a Tune trial runs the search)."""
    from orchestrator import tracking
    from orchestrator.cluster_checks import check_resources, check_storage, per_worker_resources
    from orchestrator.provenance import provenance
    from orchestrator.ray_session import ray_session
    from orchestrator.search import open_data, resolve_latency
    from orchestrator.search.driver import check_target, search_feeds

    latency = resolve_latency(cfg)  # unknown hardware or a bad table fails here, before any worker starts
    check_target(cfg, latency)  # so does a hard budget below the fastest net
    data = open_data(cfg)  # so does data that does not fit the space (its classes), or that is not there
    search_feeds(cfg, data, 0, spec.num_workers)  # and batches that do not split over the workers
    uri = tracking.resolve_tracking_uri(spec.tracking_uri)
    tracking.check_tracking_uri(uri)
    storage = check_storage(spec.storage_path)
    name = spec.name or default_run_name(cfg)
    space = cfg.search_space
    per_worker = per_worker_resources(spec.cpus_per_worker, spec.use_gpu)
    with ray_session():
        check_resources(spec.num_workers, per_worker, spec.allow_autoscale)
        check_existing_run(storage, name, cfg)  # writes the run's meta: only once the run can start
        tags = {"nas.kind": "search", "nas.space": space.name, "nas.space_fingerprint": space.fingerprint(),
                "nas.hardware": cfg.hardware, "nas.target": f"{cfg.target:g}", "nas.run_name": name,
                "nas.storage": f"{storage}/{name}", "nas.data": data.where, **dict(spec.tags)}

        def create() -> str:
            new_id = tracking.create_run(uri, spec.experiment, name,
                                         params={"search": cfg.to_dict(), "run": asdict(spec) | {"name": name},
                                                 "provenance": provenance()},
                                         tags=tags, parent_run_id=spec.parent_run_id)
            log_latency_model(uri, new_id, latency)
            return new_id

        run_id, _ = tracked_run(storage, name, uri, spec.experiment, create)
        result, wall = fit_tracked(
            "search", name, train_loop_per_worker,
            {"search": cfg.to_dict(), "spec": asdict(spec), "run_id": run_id, "tracking_uri": uri,
             "threads": max(1, int(spec.cpus_per_worker)), "run_dir": f"{storage}/{name}"},
            num_workers=spec.num_workers, use_gpu=spec.use_gpu, per_worker=per_worker, storage=storage,
            max_failures=spec.max_failures, keep=2, callbacks=callbacks, uri=uri, run_id=run_id)
    out = result.return_value
    if out.get("diverged"):
        tracking.set_tags(uri, run_id, {"nas.failure": out["diverged"]})
        tracking.end_run(uri, run_id, "FAILED")
        raise RanksDiverged(f"search {name!r} failed: {out['diverged']}")
    ckpt_path = None
    if result.checkpoint is not None:
        ckpt_path = result.checkpoint.path
        if storage.startswith("s3://") and not ckpt_path.startswith("s3://"):
            ckpt_path = "s3://" + ckpt_path
    worker_seconds = wall * spec.num_workers
    on_gpu = str(out.get("device", "cpu")).startswith("cuda")  # what the workers really ran on
    gap = log_tracking_summary(uri, run_id, out.get("tracking"))
    log_search_result(uri, run_id, out, cost={**search_cost(out, worker_seconds, wall, on_gpu), **gap})
    tracking.end_run(uri, run_id)
    return DistributedResult(out, run_id, uri, storage, name, ckpt_path, worker_seconds, wall)


def log_latency_model(uri: str, run_id: str, latency) -> None:
    """The latency model a search optimised against: its provenance as an artifact, its held-out validation
    (within ±10%, Spearman, MAPE, noise floor, and the plain table's figures) as metrics."""
    from orchestrator import tracking
    from orchestrator.latency.calibrate import validation_metrics

    tracking.log_artifact_files(uri, run_id, {"latency_model.json": json.dumps(
        {"hardware": latency.hardware, "unit": latency.unit, "provenance": latency.provenance}, indent=1,
        default=str)})
    tracking.log_metrics(uri, run_id, validation_metrics(latency.provenance), step=0)


def search_cost(search: dict, worker_seconds: float, wall: float, on_gpu: bool) -> dict[str, float]:
    """A search's cost record: worker-seconds of the whole Train run (start-up included), GPU-seconds only when the
    workers ran on GPUs, rank 0's seconds per phase, each timed directly (``SearchResult.seconds``), and the
    ``cost.*`` breakdown (warm-up, weight steps, architecture steps, the rest) every run and point carries."""
    from orchestrator.cost import search_cost as breakdown

    phases = {f"{k}_seconds": float(v) for k, v in search.get("seconds", {}).items()}
    parts = breakdown(search.get("seconds", {}), worker_seconds, int(search.get("world_size", 1)), on_gpu)
    return {"worker_seconds": worker_seconds, "gpu_seconds": worker_seconds if on_gpu else 0.0,
            "wall_seconds": wall, **phases, **parts.metrics()}


def alpha_table_csv(search: dict) -> str:
    """α and probabilities per block and candidate, one row per block: the artifact users read in MLflow."""
    cands = search["candidates"]
    head = "block," + ",".join(f"alpha_{c}" for c in cands) + "," + ",".join(f"p_{c}" for c in cands)
    rows = [head]
    for b, (a, p) in enumerate(zip(search["alpha"], search["probs"])):
        fmt = lambda v: "" if v is None or v != v or v in (float("inf"), float("-inf")) else f"{v:.6g}"  # noqa: E731
        rows.append(f"{b}," + ",".join(fmt(v) for v in a) + "," + ",".join(fmt(v) for v in p))
    return "\n".join(rows) + "\n"


def log_search_result(uri: str, run_id: str, search: dict, cost: dict) -> None:
    """The derived architecture, α table, net.config and result as artifacts; headline metrics; tags."""
    from orchestrator import tracking
    from orchestrator.arch import Arch
    from orchestrator.netconfig import to_net_config

    arch = Arch.parse(search["arch"])
    tracking.log_artifact_files(uri, run_id, {
        "arch.txt": search["arch"] + "\n",
        "alpha.csv": alpha_table_csv(search),
        "net.config": json.dumps(to_net_config(arch), indent=4),
        "result.json": json.dumps(search, indent=1, default=str),
    })
    metrics = {"exact_latency": search["exact_latency"], "expected_latency": search["expected_latency"],
               "entropy": search["entropy"], **cost}
    if search.get("valid_accuracy") is not None:
        metrics["supernet_valid_accuracy"] = search["valid_accuracy"]
    tracking.log_metrics(uri, run_id, metrics, step=search["steps"])
    tracking.set_tags(uri, run_id, {"nas.arch": search["arch"], "nas.alpha_fingerprint": search["alpha_fingerprint"]})
