"""A job and its MLflow record, the same in one process and on Ray.

A job (``search.jobs.SearchJob``, ``retrain.jobs.RetrainJob``) says what its run checks up front, how it is tagged
and parametrised, and how rank 0's result is recorded. ``ray_train.run_on_ray`` runs it on Ray Train workers; its
one-process entry (``search.local``, ``retrain.local``) runs it here. Both open the run with ``open_run`` and close
it with ``close_run``, so a run records the same parameters, tags, metrics and artifacts wherever it ran.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from orchestrator import storage as st
from orchestrator import tracking
from orchestrator.lease import LEASE_FILE, refuse_fresh_over_checkpoint, takeover_line
from orchestrator.redact import redact

log = logging.getLogger(__name__)

RUN_FILE = "mlflow-run.json"  # a run folder's MLflow run: a restarted driver (or a resumed process) continues it

__all__ = ["Job", "RunInfo", "LocalRecord", "open_run", "close_run", "local_tracking_uri", "check_existing_run",
           "check_fresh_run", "tracked_run",
           "log_tracking_summary", "RUN_FILE"]


@dataclass(frozen=True)
class RunInfo:
    """A finished run, as its driver (or its one process) saw it."""

    run_id: str | None  # None: a one-process run with no tracking URI
    tracking_uri: str | None
    name: str
    storage_path: str | None  # the storage of a Ray run; None in one process
    checkpoint_path: str | None  # the last checkpoint's folder (s3://... on S3) or file
    wall_seconds: float
    worker_seconds: float
    tracking: dict[str, float]  # what rank 0 could not send, sent by the driver (``ray_train.log_tracking_summary``)


class Job(Protocol):
    """What a search or a retrain run needs to be run and recorded."""

    kind: str  # search | retrain: the run's ``nas.kind`` and the word its failure lines start with
    experiment: str  # the default MLflow experiment
    checkpoint_file: str  # the per-rank state's file name in a checkpoint
    checkpoints_kept: int  # on Ray

    def default_name(self) -> str: ...
    def preflight(self, num_workers: int) -> None: ...  # every check that needs no cluster; ValueError
    def run_meta(self) -> dict: ...  # space, space_fingerprint, config: what a resumed run folder must match
    def tags(self, name: str, where: str) -> dict[str, str]: ...
    def params(self, how: dict) -> dict: ...  # ``how``: where and how it ran (the cluster spec, or the device)
    def on_created(self, uri: str, run_id: str) -> None: ...  # e.g. the latency model the search runs against
    def worker_config(self) -> dict: ...  # JSON-ready: what every Ray worker needs besides the common keys
    def train_func(self) -> Callable[[dict], dict]: ...  # a module-level function (it is pickled to the workers)
    def finish(self, out: dict, run: RunInfo) -> Any: ...  # record rank 0's result; the job's typed result


def local_tracking_uri(uri: str | None) -> str | None:
    """The tracking URI of a one-process run: the one given, else ``MLFLOW_TRACKING_URI``, else none (the run
    writes its files only). A Ray run always records (``tracking.resolve_tracking_uri``)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or None


@dataclass
class LocalRecord:
    """The MLflow record of a one-process run in the folder ``out`` (none without a tracking URI): its run, and the
    metric sink its loop logs to (rank 0's on Ray)."""

    uri: str | None
    run_id: str | None = None
    sink: tracking.MetricSink | None = None
    reopened: bool = False

    @classmethod
    def checked(cls, tracking_uri: str | None) -> "LocalRecord":
        """Resolve (and reach) the tracking URI: before the run's folder is created."""
        uri = local_tracking_uri(tracking_uri)
        if uri is not None:
            tracking.check_tracking_uri(uri)
        return cls(uri)

    def open(self, job: Job, out: Path, device: str, experiment: str | None, name: str | None, fresh: bool,
             tags: dict[str, str] | None = None, parent_run_id: str | None = None,
             takeover: dict | None = None) -> str:
        """Create the run (``fresh``), or continue the one the folder records while it is unfinished (a resume);
        a lease taken over from a dead run is tagged on it. Returns the run's name (``job``'s default unless
        given)."""
        name = name or job.default_name()
        if self.uri is None:
            return name
        experiment = experiment or job.experiment
        how = {"mode": "one process", "device": device, "out": str(out), "name": name}
        if fresh:  # a fresh run is a new MLflow run, whatever the folder held
            (out / RUN_FILE).unlink(missing_ok=True)
        self.run_id, self.reopened = tracked_run(str(out.parent), out.name, self.uri, experiment, lambda: open_run(
            job, self.uri, experiment, name, how, str(out), tags, parent_run_id))
        self.sink = tracking.MetricSink(self.uri, self.run_id)
        if takeover:
            tracking.set_tags(self.uri, self.run_id, {"nas.lease_takeover": takeover_line(takeover)})
        return name

    def close(self) -> dict[str, float]:
        """Flush the sink; send what it could not; the tracking counters to record."""
        if self.sink is None:
            return {}
        self.sink.flush(force=True)
        return log_tracking_summary(self.uri, self.run_id, self.sink.summary())


def open_run(job: Job, uri: str, experiment: str, name: str, how: dict, where: str,
             tags: dict[str, str] | None = None, parent_run_id: str | None = None) -> str:
    """Create the job's MLflow run: its parameters (the config, ``how`` it runs, provenance), its tags (the job's,
    then ``tags``), nested under ``parent_run_id``; then the job's own first records."""
    run_id = tracking.create_run(uri, experiment, name, params=job.params(how),
                                 tags={**job.tags(name, where), **(tags or {})}, parent_run_id=parent_run_id)
    job.on_created(uri, run_id)
    return run_id


def close_run(job: Job, out: dict, run: RunInfo) -> Any:
    """Record rank 0's result through ``job.finish`` and mark the run FINISHED; if recording fails (a search
    whose ranks diverged, say) the run is FAILED with the reason as its ``nas.failure`` tag."""
    try:
        res = job.finish(out, run)
    except Exception as e:
        if run.run_id is not None:
            tracking.set_tags(run.tracking_uri, run.run_id,
                              {"nas.failure": redact((str(e).splitlines() or [type(e).__name__])[0])[:5000]})
            tracking.end_run(run.tracking_uri, run.run_id, "FAILED")
        raise
    if run.run_id is not None:
        tracking.end_run(run.tracking_uri, run.run_id)
    return res


def check_existing_run(storage: str, name: str, meta: dict, file: str) -> None:
    """Refuse to resume a run folder written by a run of another space (or another config); a new folder gets the
    run's ``meta`` (space, space_fingerprint, config) in ``file``."""
    loc = st.resolve(storage)
    rel = f"{name}/{file}"
    saved = json.loads(st.read_bytes(loc, rel)) if st.exists(loc, rel) else None
    if saved is None:
        st.publish_bytes(loc, rel, json.dumps(meta, indent=1).encode())
        return
    if saved["space_fingerprint"] != meta["space_fingerprint"]:
        raise ValueError(
            f"run {name!r} in {storage} holds a checkpoint of space {saved['space']!r} "
            f"(fingerprint {saved['space_fingerprint']}), not {meta['space']!r} ({meta['space_fingerprint']}); "
            f"refusing to resume it: choose another --name")
    if saved["config"] != meta["config"]:
        diff = sorted(k for k in set(saved["config"]) | set(meta["config"])
                      if saved["config"].get(k) != meta["config"].get(k))
        raise ValueError(f"run {name!r} in {storage} was started with another config (differs in "
                         f"{', '.join(diff)}); refusing to resume it: choose another --name")


def check_fresh_run(storage: str, name: str, kind: str, resume: bool, overwrite: bool) -> None:
    """A Ray run folder that holds a checkpoint (Ray Train's ``checkpoint_*``) is continued only with ``resume``;
    with ``overwrite`` everything in it but the lease is removed first (Ray Train would resume from what is left);
    a fresh run refuses it with one line naming the folder and the two flags."""
    if resume:
        return
    import pyarrow.fs as pafs

    loc = st.resolve(storage)
    try:
        infos = loc.fs.get_file_info(pafs.FileSelector(loc.path(name), allow_not_found=True))
    except OSError as e:
        raise st.storage_error(e, loc.uri_of(name)) from None
    if not any(i.base_name.startswith("checkpoint_") for i in infos):
        return
    if not overwrite:
        refuse_fresh_over_checkpoint(f"run {name!r} in {storage}", kind)
    log.warning("--overwrite: removing the earlier run in %s", loc.uri_of(name))
    for i in infos:
        try:
            if i.type == pafs.FileType.Directory:
                loc.fs.delete_dir(i.path)
            elif i.base_name != LEASE_FILE:
                loc.fs.delete_file(i.path)
        except OSError as e:
            raise st.storage_error(e, f"{loc.uri_of(name)}/{i.base_name}") from None


def tracked_run(storage: str, name: str, uri: str, experiment: str, create: Callable[[], str]) -> tuple[str, bool]:
    """The MLflow run of the run folder ``storage``/``name``: the run recorded there, reopened, when it is not
    FINISHED (its driver died: the same command continues the same run, as Ray Train continues its
    checkpoints), else a new one from ``create()``, recorded there. Returns (run id, whether it was reopened).
    The file records the tracking URI with its credentials masked (``redact``), and is matched that way."""
    loc = st.resolve(storage)
    rel = f"{name}/{RUN_FILE}"
    shown = redact(uri)
    if st.exists(loc, rel):
        saved = json.loads(st.read_bytes(loc, rel))
        if saved.get("tracking_uri") == shown and tracking.reopen_run(uri, saved["run_id"], experiment):
            return saved["run_id"], True
    run_id = create()
    st.publish_bytes(loc, rel, json.dumps({"tracking_uri": shown, "experiment": experiment, "run_id": run_id},
                                          indent=1).encode())
    return run_id, False


def log_tracking_summary(uri: str, run_id: str, summary: dict | None) -> dict[str, float]:
    """Send what rank 0 could not (with MlflowClient's own retries: the driver holds no rank) and return the
    tracking counters to record on the run: points sent late, metrics lost to the buffer's bound, seconds rank 0
    spent in tracking calls."""
    if not summary:
        return {}
    if summary["unsent"]:
        log.warning("sending %d metric(s) that rank 0 could not", len(summary["unsent"]))
        tracking.log_metric_rows(uri, run_id, summary["unsent"])
    return {"tracking_deferred_points": summary["deferred_points"],
            "tracking_dropped_metrics": summary["dropped_metrics"], "tracking_seconds": summary["seconds"]}
