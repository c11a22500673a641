"""MLflow as the record, through an explicit ``MlflowClient`` (no active-run globals, which diverge across Ray
processes). Runs are created by a driver and written to by exactly one process (the driver or rank 0)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PARAM_LIMIT = 6000  # MLflow's param value length limit


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use everywhere: the given one, ``MLFLOW_TRACKING_URI``, else SQLite in the cwd.

    Relative SQLite paths are made absolute, because Ray workers run in other working directories.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_sqlite_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    elif "://" not in uri:
        raise ValueError(f"tracking URI {uri!r} has no scheme: use http(s)://host:port or sqlite:///path")
    return uri


def default_sqlite_uri() -> str:
    """SQLite in the working directory; but inside a Ray job, whose working directory is a temporary copy that
    Ray deletes, in ``~/.nas/mlflow.db`` on the node that runs the driver, so that the record outlives the job."""
    try:
        cwd = os.getcwd()
    except FileNotFoundError:
        cwd = None
    if cwd is None or "runtime_resources" in Path(cwd).parts:
        home = Path.home() / ".nas"
        home.mkdir(parents=True, exist_ok=True)
        log.warning("MLFLOW_TRACKING_URI is not set; recording to sqlite:///%s/mlflow.db on this node", home)
        return f"sqlite:///{home}/mlflow.db"
    return "sqlite:///mlflow.db"


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail before any training if the tracking store cannot be reached."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                if r.status != 200:
                    raise ValueError(f"MLflow tracking server {uri} answered /health with HTTP {r.status}")
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ValueError(f"MLflow tracking server {uri} is unreachable: {reason}") from None
    elif uri.startswith("sqlite:///"):
        parent = Path(uri[len("sqlite:///"):]).parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise ValueError(f"MLflow SQLite store {uri}: folder {parent} does not exist or is not writable")
    elif uri.startswith(("postgresql://", "mysql://", "databricks")):
        return
    else:
        raise ValueError(f"unsupported MLflow tracking URI {uri!r}")


def client(uri: str):
    from mlflow import MlflowClient

    try:  # MLflow's SQLite store resolves its default artifact root against the working directory, which a
        os.getcwd()  # Ray job's can lose: a second node on the same machine re-extracts the job's package there
    except FileNotFoundError:
        os.chdir(Path.home())

    return MlflowClient(tracking_uri=uri)


def experiment_id(uri: str, name: str, create: bool = True) -> str:
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    if not create:
        raise ValueError(f"unknown MLflow experiment {name!r} at {uri}")
    location = None
    if uri.startswith("sqlite:///"):  # artifacts beside the database, not in whatever the working directory is
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return c.create_experiment(name, artifact_location=location)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            text = v if isinstance(v, str) else json.dumps(v)
            out[key] = text[:PARAM_LIMIT]
    return out


def create_run(uri: str, experiment: str, run_name: str, params: Mapping[str, Any] | None = None,
               tags: Mapping[str, str] | None = None, parent_run_id: str | None = None) -> str:
    """Create a run (nested under ``parent_run_id`` if given) and log its params; returns the run id."""
    from mlflow.entities import Param

    c = client(uri)
    all_tags = dict(tags or {})
    all_tags["mlflow.runName"] = run_name
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = c.create_run(experiment_id(uri, experiment), run_name=run_name, tags=all_tags)
    flat = _flatten(params or {})
    items = [Param(k, v) for k, v in flat.items()]
    for i in range(0, len(items), 100):
        c.log_batch(run.info.run_id, params=items[i : i + 100])
    log.info("MLflow run %s (%s) in experiment %s", run.info.run_id, run_name, experiment)
    return run.info.run_id


def log_metrics(uri: str, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    import time

    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    items = [Metric(k, float(v), ts, step) for k, v in metrics.items() if v is not None]
    if items:
        client(uri).log_batch(run_id, metrics=items)


def set_tags(uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    c = client(uri)
    for k, v in tags.items():
        c.set_tag(run_id, k, v)


def log_artifact_files(uri: str, run_id: str, files: Mapping[str, bytes | str], artifact_path: str | None = None) -> None:
    """Log in-memory files as artifacts of a run (through the tracking server's artifact store)."""
    c = client(uri)
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            p = Path(tmp) / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data.encode() if isinstance(data, str) else data)
        c.log_artifacts(run_id, tmp, artifact_path)


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(uri).set_terminated(run_id, status)


def find_runs(uri: str, experiment: str, filter_string: str = "", create: bool = False) -> list:
    """Every run of ``experiment`` matching ``filter_string`` (all pages); ``ValueError`` for an unknown experiment."""
    c = client(uri)
    exp_id = experiment_id(uri, experiment, create=create)
    runs, token = [], None
    while True:
        page = c.search_runs([exp_id], filter_string=filter_string, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def mark_stale_runs(uri: str, experiment: str, filter_string: str, status: str = "KILLED") -> list[str]:
    """Close runs left RUNNING by a driver that died (e.g. before a sweep resumes); returns their ids."""
    base = "attributes.status = 'RUNNING'"
    stale = find_runs(uri, experiment, f"{filter_string} and {base}" if filter_string else base)
    for r in stale:
        end_run(uri, r.info.run_id, status)
    return [r.info.run_id for r in stale]
