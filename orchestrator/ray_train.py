"""The one way onto Ray: ``run_on_ray(job, cluster)`` runs a search or a retrain on Ray Train workers.

The driver's sequence is the same for every job: check what the job can check without Ray (its config, latency
model, data, batch split), the tracking server and the storage; join Ray (or start a private local one, through
``ray_session``) and check the cluster's resources; refuse a run folder written by another space or config;
create the MLflow run, or continue the one of an interrupted driver (recorded in the run's folder); fit the job's
``train_func`` on ``cluster.num_workers`` Ray Train workers with checkpoints in the run folder; hand the workers'
result to the job, which records it; close the run. On the workers, ``start_worker`` builds the rank's runtime,
restores its checkpoint (or seeds a fresh start) and gives rank 0 the metric sink; ``report`` reports a checkpoint.

Ray is an optional package: it is imported in the functions that use it, so the core runs with torch alone.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from orchestrator import storage as st
from orchestrator import tracking
from orchestrator.cluster_checks import check_resources, check_storage, check_worker_shape, per_worker_resources
from orchestrator.console import FinalLine, is_terminal
from orchestrator.ray_session import ray_session
from orchestrator.lease import acquire_lease, check_run_flags, takeover_line
from orchestrator.redact import has_credentials, install as install_redaction, redact
from orchestrator.runs import (Job, RunInfo, check_existing_run, check_fresh_run, close_run, log_tracking_summary,
                               open_run, tracked_run)
from orchestrator.state_io import load_state
from orchestrator.train.checkpoint import seed_rank
from orchestrator.train.runtime import DistComm, Precision, Runtime

__all__ = ["ClusterSpec", "TrainWorker", "run_on_ray", "start_worker", "load_state_uri",
           "checkpoint_file_state", "failure_line", "worker_tracking_uri"]

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class ClusterSpec:
    """Where and how a job runs on the cluster and where it is recorded (the job's own config says what it does).
    One type for search and retrain, for sweep trials and for the CLI's shared options."""

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    storage_path: str = "runs"  # local path (one node), NFS, or s3://bucket/prefix
    name: str | None = None  # the run's folder under storage_path (one folder name)
    max_failures: int = 2  # worker-group restarts after a worker or node failure
    tracking_uri: str | None = None  # default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the cwd
    experiment: str | None = None  # default: the job's (nas-search, nas-retrain)
    parent_run_id: str | None = None  # MLflow parent (a sweep's trial, the search a retrain came from)
    tags: tuple[tuple[str, str], ...] = ()
    allow_autoscale: bool = False  # skip the up-front resource check on autoscaling clusters
    progress: bool = True  # rank 0's progress bar on the driver's console (a sweep's trials draw none)
    resume: bool = False  # continue from the run folder's checkpoint (a fresh run refuses a folder that holds one)
    overwrite: bool = False  # start afresh: the run folder's checkpoints and records are removed first

    def __post_init__(self) -> None:
        check_worker_shape(self.num_workers, self.cpus_per_worker)
        check_run_flags(self.name, self.resume, self.overwrite)
        if self.max_failures < 0:
            raise ValueError(f"max_failures: must be 0 or more, got {self.max_failures}")

    @property
    def threads(self) -> int:
        """Intra-op threads of each worker: its CPUs (at least one)."""
        return max(1, int(self.cpus_per_worker))

    def replace(self, **changes: Any) -> "ClusterSpec":
        return ClusterSpec(**{**asdict(self), **changes})


# ---------------------------------------------------------------------------------------------------- the driver
def run_on_ray(job: Job, cluster: ClusterSpec, callbacks: Sequence[Any] = ()) -> Any:
    """Check everything that can be checked, then run ``job`` on ``cluster.num_workers`` Ray Train workers and
    return what ``job.finish`` makes of rank 0's result. ``callbacks`` go to the trainer's RunConfig (e.g.
    ``TuneReportCallback()`` when a Tune trial runs the job)."""
    job.preflight(cluster.num_workers)  # a bad table, target, data or batch split fails here, before Ray starts
    uri = tracking.resolve_tracking_uri(cluster.tracking_uri)
    tracking.check_tracking_uri(uri)
    storage = check_storage(cluster.storage_path)
    name = cluster.name or job.default_name()
    experiment = cluster.experiment or job.experiment
    per_worker = per_worker_resources(cluster.cpus_per_worker, cluster.use_gpu)
    run_dir = f"{storage}/{name}"
    # one live run per folder: a second run is refused here, naming the holder, before Ray starts; a dead run's
    # lease is taken over. A fresh run refuses a folder with a checkpoint (--resume continues it, --overwrite clears it).
    with acquire_lease(run_dir, job.kind) as lease:
        check_fresh_run(storage, name, job.kind, cluster.resume, cluster.overwrite)
        with ray_session():
            check_resources(cluster.num_workers, per_worker, cluster.allow_autoscale)
            # writes the run's meta: only once the run can start
            check_existing_run(storage, name, job.run_meta(), f"{job.kind}-meta.json")
            how = asdict(cluster) | {"name": name, "mode": "ray"}
            run_id, _ = tracked_run(storage, name, uri, experiment, lambda: open_run(
                job, uri, experiment, name, how, run_dir, dict(cluster.tags), cluster.parent_run_id))
            if lease.takeover:
                tracking.set_tags(uri, run_id, {"nas.lease_takeover": takeover_line(lease.takeover)})
            # Ray Train shows the loop config on the dashboard: it carries the URI masked, and a URI with
            # credentials travels to the workers as an object in the object store (``worker_tracking_uri``)
            config = {"job": job.worker_config(), "run_id": run_id, "tracking_uri": redact(uri),
                      "tracking_uri_ref": _object_ref(uri) if has_credentials(uri) else None,
                      "use_gpu": cluster.use_gpu, "threads": cluster.threads,
                      "progress": progress_mode(cluster.progress),
                      "run_dir": run_dir}
            result, wall = _fit(job.kind, name, job.train_func(), config, cluster, per_worker, storage,
                                job.checkpoints_kept, callbacks, uri, run_id)
            out = result.return_value
            if lease.takeover:
                out["lease_takeover"] = lease.takeover
            ckpt_path = None
            if result.checkpoint is not None:
                ckpt_path = result.checkpoint.path
                if storage.startswith("s3://") and not ckpt_path.startswith("s3://"):
                    ckpt_path = "s3://" + ckpt_path
            gap = log_tracking_summary(uri, run_id, out.get("tracking"))
            return close_run(job, out, RunInfo(run_id, uri, name, storage, ckpt_path, wall,
                                               wall * cluster.num_workers, gap))


def progress_mode(progress: bool) -> str | bool:
    """How rank 0 shows its progress, decided by the driver, whose console it is: ``"bar"`` on a terminal (drawn
    by Ray's ``tqdm_ray`` on the driver), ``"line"`` in a log (one final line), False for none."""
    return ("bar" if is_terminal() else "line") if progress else False


def _object_ref(value: Any) -> Any:
    import ray

    return ray.put(value)


def worker_tracking_uri(config: dict) -> str:
    """The tracking URI on a Train worker: the one with credentials from the object store when the driver put it
    there, else the loop config's own."""
    ref = config.get("tracking_uri_ref")
    if ref is None:
        return config["tracking_uri"]
    import ray

    return ray.get(ref)


def failure_line(e: BaseException) -> str:
    """One line that names why a Train run failed: the first failing worker's own exception when there is one
    (Ray wraps it in a ``WorkerGroupError`` and a ``RayTaskError``), else the error's first line."""
    failures = getattr(e, "worker_failures", None)
    if failures:
        e = failures[min(failures)]
    while getattr(e, "cause", None) is not None and e.cause is not e:  # RayTaskError -> the user's exception
        e = e.cause
    text = redact(str(e).strip())
    if not text:
        return type(e).__name__
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0]}" if not isinstance(e, (ValueError, OSError)) else lines[0]


def _fit(kind: str, name: str, loop: Callable[[dict], dict], loop_config: dict, cluster: ClusterSpec,
         per_worker: dict, storage: str, keep: int, callbacks: Sequence[Any], uri: str,
         run_id: str) -> tuple[Any, float]:
    """Fit ``loop`` on Ray Train workers with checkpoints under ``storage``/``name``; on failure the MLflow run
    is marked FAILED and one line says why. Returns (Ray ``Result``, wall seconds)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    loc = st.resolve(storage)  # an explicit filesystem carries an S3-compatible endpoint to every worker
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cluster.num_workers, use_gpu=cluster.use_gpu,
                                     resources_per_worker=per_worker),
        run_config=RunConfig(name=name, storage_path=loc.root, storage_filesystem=loc.fs if loc.is_s3 else None,
                             failure_config=FailureConfig(max_failures=cluster.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=keep), callbacks=list(callbacks)),
    )
    t0 = time.time()
    try:
        result = trainer.fit()
    except Exception as e:
        line = failure_line(e)
        tracking.set_tags(uri, run_id, {"nas.failure": line[:5000]})
        tracking.end_run(uri, run_id, "FAILED")
        raise RuntimeError(f"{kind} {name!r} failed: {line}") from e
    if result.return_value is None:
        tracking.end_run(uri, run_id, "FAILED")
        raise RuntimeError(f"{kind} {name!r} returned no result")
    return result, time.time() - t0


# ---------------------------------------------------------------------------------------------------- the workers
@dataclass
class TrainWorker:
    """One rank of a job's Train run: its runtime, the state it resumes from (None on a fresh start), rank 0's
    metric sink and progress bar."""

    config: dict  # the loop config ``run_on_ray`` passed
    rt: Runtime
    resume: dict | None
    sink: tracking.MetricSink | None
    progress: Any

    @property
    def job(self) -> dict:
        return self.config["job"]

    @property
    def run_dir(self) -> str:
        return self.config["run_dir"]

    def report(self, metrics: dict, files: dict[str, Any]) -> None:
        """Report a checkpoint of ``files`` (rank 0's are written; ``.pt`` names get ``torch.save``, others JSON)
        with ``metrics``; collective."""
        report_checkpoint(metrics, files if self.rt.rank == 0 else None)

    def close(self) -> dict | None:
        """Flush rank 0's metrics; what it could not send travels to the driver in the result."""
        if self.sink is None:
            return None
        self.sink.flush(force=True)
        return self.sink.summary()


def start_worker(config: dict, checkpoint_file: str, what: str, seed: int, precision: Precision) -> TrainWorker:
    """Start this rank: its runtime (the GPU Ray assigned it, or the CPU; gloo or NCCL), the state of the run's
    latest reported checkpoint (``weights_only``) or, on a fresh start, a rank RNG seeded from (seed, rank)."""
    install_redaction()  # this worker's log lines (and MLflow's) reach the driver's console and Ray's log files
    rt = worker_runtime(config["use_gpu"], precision, config["threads"])
    resume = restored_state(checkpoint_file, what)
    if resume is None:
        seed_rank(seed, rt.rank)  # a resume restores each rank's saved state instead
    else:
        log.info("rank %d resumes at step %d", rt.rank, resume["step"])
    sink = tracking.MetricSink(worker_tracking_uri(config), config["run_id"]) if rt.rank == 0 else None
    mode = config["progress"] if rt.rank == 0 else False
    progress = FinalLine if mode == "line" else RankZeroBar if mode else False
    return TrainWorker(config, rt, resume, sink, progress)


def worker_runtime(use_gpu: bool, precision: Precision, threads: int) -> Runtime:
    """The runtime of this Train worker: its device (the GPU Ray assigned it, or the CPU), precision and the
    process group Ray Train initialised (gloo on CPUs, NCCL on GPUs)."""
    torch.set_num_threads(max(1, threads))
    if use_gpu:
        from ray.train.torch import get_device

        device = get_device()
    else:
        device = torch.device("cpu")
    return Runtime(device=device, precision=precision, comm=DistComm())


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
    path = f"{ckpt.path.rstrip('/')}/{file}"
    try:
        with ckpt.filesystem.open_input_stream(path) as f:
            data = f.read()
    except OSError as e:
        raise st.storage_error(e, f"{what} {path}") from None
    return load_state(data, what, name=path)


def load_state_uri(uri: str, what: str = "search state") -> dict:
    """A state saved by a checkpoint (e.g. ``.../search_state.pt``), from a local path or ``s3://``; loaded with
    ``weights_only=True``, so a tampered file is refused and its payload never runs."""
    return load_state(st.read_uri(uri), what, name=uri)


class RankZeroBar:
    """Rank 0's progress bar, drawn on the driver's console by Ray (``ray.experimental.tqdm_ray``)."""

    def __init__(self, total: int, done: int, desc: str) -> None:
        from ray.experimental.tqdm_ray import tqdm

        self.bar, self.desc = tqdm(desc=desc, total=total, unit="step"), desc
        self.bar.update(done)
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def set_postfix(self, **values: Any) -> None:
        self.bar.set_description(f"{self.desc} " + " ".join(f"{k}={v}" for k, v in values.items()))

    def close(self) -> None:
        """Send the closing state once. The driver's ``tqdm_ray`` manager removes a bar when its closing state
        arrives, but a state of that bar arriving after it (a second close, or a second copy of the line) draws it
        anew, and that bar is never closed: it is redrawn, its elapsed time growing, around every later line the
        driver prints. Each state line must therefore reach the driver once: Ray Train's print patch (which sends
        a worker's ``print`` both to stdout and to its logger, two forwarded copies) is off for the project's
        workers (``ray_session.worker_env``)."""
        if self.closed:
            return
        self.closed = True
        self.bar.close()
        # The closing state is a line on this worker's stdout, which Ray forwards to the driver; Ray Train ends the
        # worker soon after, so do not leave it in the buffer.
        sys.stdout.flush()
