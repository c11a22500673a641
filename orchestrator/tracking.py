"""MLflow as the record, through an explicit ``MlflowClient`` (no active-run globals, which diverge across Ray
processes). Runs are created by a driver and written to by exactly one process (the driver or rank 0)."""

from __future__ import annotations

import base64
import json
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.redact import has_credentials, redact, strip_credentials

log = logging.getLogger(__name__)

PARAM_LIMIT = 6000  # MLflow's param value length limit
TEXT_ARTIFACTS = (".json", ".txt", ".csv", ".yaml", ".yml", ".config", ".log", ".md")  # masked like text
# experiments created here are model development, which MLflow 3.17's UI opens on their runs (not its GenAI view)
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use everywhere: the given one, ``MLFLOW_TRACKING_URI``, else SQLite in the cwd.

    Relative SQLite paths are made absolute, because Ray workers run in other working directories.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_sqlite_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    elif "://" not in uri:
        raise ValueError(f"tracking URI {redact(uri)!r} has no scheme: use http(s)://host:port or sqlite:///path")
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
    """Fail before any training if the tracking store cannot be reached. A URI's credentials (``user:pass@``) go
    in an ``Authorization`` header, as MLflow's client sends them, and never into a message."""
    shown = redact(uri)
    if uri.startswith(("http://", "https://")):
        bare, in_uri = strip_credentials(uri)
        creds = in_uri or _mlflow_creds()
        req = urllib.request.Request(bare.rstrip("/") + "/health")
        if creds is not None:
            req.add_header("Authorization", "Basic " + base64.b64encode(":".join(creds).encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status = r.status
        except (urllib.error.URLError, OSError, ValueError) as e:  # ValueError: http.client.InvalidURL
            reason = redact(str(getattr(e, "reason", e)))
            raise ValueError(f"MLflow tracking server {shown} is unreachable: {reason}") from None
        if status != 200:
            raise ValueError(f"MLflow tracking server {shown} answered /health with HTTP {status}")
        # /health answers anyone; an authenticating server (mlflow server --app-name basic-auth) refuses wrong or
        # missing credentials on its API: say so now, not after the first training step
        req.full_url = bare.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
        try:
            with urllib.request.urlopen(req, timeout=timeout):
                pass
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                why = ("refused the credentials in the URI" if in_uri else
                       "refused the credentials of MLFLOW_TRACKING_USERNAME / ~/.mlflow/credentials" if creds else
                       "requires credentials: put them in the URI (http://user:password@host), in "
                       "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or in ~/.mlflow/credentials")
                raise ValueError(f"MLflow tracking server {shown} {why} (HTTP {e.code})") from None
        except (urllib.error.URLError, OSError, ValueError):
            pass  # reachable a moment ago: MLflow's own calls retry and report
    elif uri.startswith("sqlite:///"):
        parent = Path(uri[len("sqlite:///"):]).parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise ValueError(f"MLflow SQLite store {shown}: folder {parent} does not exist or is not writable")
    elif uri.split("://", 1)[0].split("+", 1)[0] in ("postgresql", "mysql", "mssql") or uri.startswith("databricks"):
        return  # a database (``postgresql+psycopg2://`` included): MLflow's own first call says what is wrong
    else:
        raise ValueError(f"unsupported MLflow tracking URI {shown!r}")


def _mlflow_creds() -> tuple[str, str] | None:
    """(user, password) as MLflow's client finds them without the URI: MLFLOW_TRACKING_USERNAME and
    MLFLOW_TRACKING_PASSWORD, else ``~/.mlflow/credentials``; None when there are none."""
    try:
        from mlflow.utils.credentials import read_mlflow_creds
    except ImportError:  # no MLflow: nothing to record with anyway, and the caller says so
        return None
    c = read_mlflow_creds()
    return (c.username, c.password) if c.username and c.password else None


def client(uri: str):
    from mlflow import MlflowClient

    # MLflow prints "View run ... at: <URL>" to stdout when a run ends on a tracking server (read at each end, so
    # set here, in every process that ends a run): never with a URI's credentials; otherwise unless a user asked
    # for it, since the project prints its own links (``mlflow_links``)
    if has_credentials(uri):
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    else:
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

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
        raise ValueError(f"unknown MLflow experiment {name!r} at {redact(uri)}")
    location = None
    if uri.startswith("sqlite:///"):  # artifacts beside the database, not in whatever the working directory is
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return c.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Parameters as MLflow stores them: nested keys joined with dots, values as text, credentials masked."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            text = v if isinstance(v, str) else json.dumps(v)
            out[key] = redact(text)[:PARAM_LIMIT]
    return out


def create_run(uri: str, experiment: str, run_name: str, params: Mapping[str, Any] | None = None,
               tags: Mapping[str, str] | None = None, parent_run_id: str | None = None) -> str:
    """Create a run (nested under ``parent_run_id`` if given) and log its params; returns the run id."""
    from mlflow.entities import Param

    c = client(uri)
    all_tags = {k: redact(str(v)) for k, v in (tags or {}).items()}
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
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    items = [Metric(k, float(v), ts, step) for k, v in metrics.items() if v is not None]
    if items:
        client(uri).log_batch(run_id, metrics=items)


def set_tags(uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    c = client(uri)
    for k, v in tags.items():
        c.set_tag(run_id, k, redact(str(v)))


def log_artifact_files(uri: str, run_id: str, files: Mapping[str, bytes | str], artifact_path: str | None = None) -> None:
    """Log in-memory files as artifacts of a run (through the tracking server's artifact store); text files
    (``str``, or bytes of a text format) with credentials masked."""
    c = client(uri)
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            p = Path(tmp) / name
            p.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, bytes) and name.endswith(TEXT_ARTIFACTS):
                try:
                    data = data.decode()
                except UnicodeDecodeError:
                    pass
            p.write_bytes(redact(data).encode() if isinstance(data, str) else data)
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


# ------------------------------------------------------------------------------------------- reopening a run
def reopen_run(uri: str, run_id: str, experiment: str) -> bool:
    """Mark an interrupted run (not FINISHED) of ``experiment`` RUNNING again, so that a restarted driver
    continues it; returns False when the run is gone, finished, deleted or of another experiment (the caller
    then creates a new run). The run's tag ``nas.driver_restarts`` counts the reopenings."""
    from mlflow.exceptions import MlflowException

    c = client(uri)
    try:
        run = c.get_run(run_id)
    except MlflowException:
        return False
    exp = c.get_experiment_by_name(experiment)
    if (exp is None or run.info.experiment_id != exp.experiment_id or run.info.status == "FINISHED"
            or run.info.lifecycle_stage != "active"):
        return False
    restarts = int(run.data.tags.get("nas.driver_restarts", "0")) + 1
    c.update_run(run_id, status="RUNNING")
    c.set_tag(run_id, "nas.driver_restarts", str(restarts))
    log.info("MLflow run %s continues (driver restart %d)", run_id, restarts)
    return True


# ------------------------------------------------------------------------------- metrics from a training loop
LOG_BATCH_LIMIT = 1000  # metrics per log-batch request (MLflow's limit)


def _send_metrics(uri: str, run_id: str, rows: list[tuple[str, float, int, int]], timeout_s: float,
                  retries: int) -> None:
    """One log-batch of (key, value, timestamp ms, step) rows. Over HTTP with this call's own timeout and retries
    (MlflowClient's default is 7 retries with exponential backoff and a 120 s timeout, minutes in all)."""
    if uri.startswith(("http://", "https://")):
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        endpoint = "/api/2.0/mlflow/runs/log-batch"
        body = {"run_id": run_id,
                "metrics": [{"key": k, "value": v, "timestamp": ts, "step": s} for k, v, ts, s in rows]}
        resp = http_request(get_default_host_creds(uri), endpoint, "POST", max_retries=retries, backoff_factor=0.5,
                            backoff_jitter=0.0, timeout=timeout_s, json=body)
        verify_rest_response(resp, endpoint)
        return
    from mlflow.entities import Metric

    client(uri).log_batch(run_id, metrics=[Metric(k, v, ts, s) for k, v, ts, s in rows])


def logged_steps(uri: str, run_id: str, key: str, timeout_s: float = 5.0) -> set[int]:
    """The steps at which ``key`` is already recorded (empty if the store does not answer in time): a resumed
    training loop does not log the steps it replays a second time."""
    try:
        if uri.startswith(("http://", "https://")):
            from mlflow.utils.credentials import get_default_host_creds
            from mlflow.utils.rest_utils import http_request, verify_rest_response

            endpoint, steps, token = "/api/2.0/mlflow/metrics/get-history", set(), None
            while True:
                params = {"run_id": run_id, "metric_key": key, "max_results": 25000,
                          **({"page_token": token} if token else {})}
                resp = http_request(get_default_host_creds(uri), endpoint, "GET", max_retries=1, backoff_factor=0.5,
                                    timeout=timeout_s, params=params)
                body = verify_rest_response(resp, endpoint).json()
                steps |= {int(m.get("step", 0)) for m in body.get("metrics", [])}
                token = body.get("next_page_token")
                if not token:
                    return steps
        return {m.step for m in client(uri).get_metric_history(run_id, key)}
    except Exception as e:  # noqa: BLE001 (the record is best effort here: at worst a step is logged twice)
        log.warning("could not read the logged steps of %s from %s: %s", key, redact(uri),
                    redact(str(e).splitlines()[0][:200]) if str(e) else type(e).__name__)
        return set()


class MetricSink:
    """Metrics of a training loop (rank 0 of a Train run), sent so that the tracking store can never stall the
    loop, and with it every other rank waiting at the next collective.

    Each send is bounded: one HTTP attempt of at most ``timeout_s`` plus ``retries`` quick retries. While the store
    does not answer, metrics are kept in order (at most ``max_pending``; beyond that the oldest are dropped and
    counted) and sent, with their own steps and timestamps, by the first later call that gets through; after a
    failure nothing is tried for ``backoff_s`` seconds, doubling with every further failure up to
    ``max_backoff_s``, so an outage costs the loop one failed attempt per back-off. ``deferred`` counts the logged
    points that could not be sent when logged, ``dropped`` the metrics lost to the bound, ``seconds`` the time
    spent in tracking calls."""

    def __init__(self, uri: str, run_id: str, *, timeout_s: float = 5.0, retries: int = 1, backoff_s: float = 2.0,
                 max_backoff_s: float = 60.0, max_pending: int = 100_000) -> None:
        self.uri, self.run_id = uri, run_id
        self.timeout_s, self.retries = timeout_s, retries
        self.backoff_s, self.max_backoff_s, self.max_pending = backoff_s, max_backoff_s, max_pending
        self.pending: list[tuple[str, float, int, int]] = []
        self.deferred = 0
        self.dropped = 0
        self.failures = 0  # failed sends in a row
        self.seconds = 0.0
        self._next_try = 0.0

    def log(self, metrics: Mapping[str, float], step: int) -> bool:
        """Queue one point (its metrics at ``step``) and send what is queued; True when all of it was sent."""
        ts = int(time.time() * 1000)
        rows = [(k, float(v), ts, int(step)) for k, v in metrics.items() if v is not None]
        if not rows:
            return self.flush()
        self.pending += rows
        over = len(self.pending) - self.max_pending
        if over > 0:
            del self.pending[:over]
            self.dropped += over
        sent = self.flush()
        if not sent:
            self.deferred += 1
        return sent

    def flush(self, force: bool = False) -> bool:
        """Send what is queued (unless in back-off, which ``force`` ignores); True when nothing is left."""
        if not self.pending:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        t0 = time.monotonic()
        try:
            while self.pending:
                chunk = self.pending[:LOG_BATCH_LIMIT]
                _send_metrics(self.uri, self.run_id, chunk, self.timeout_s, self.retries)
                del self.pending[:len(chunk)]
        except Exception as e:  # noqa: BLE001 (whatever the store answers, training goes on)
            self.failures += 1
            wait = min(self.max_backoff_s, self.backoff_s * 2 ** (self.failures - 1))
            self._next_try = time.monotonic() + wait
            log.warning("tracking store %s did not take %d metric(s) (%s); keeping them, next try in %.0f s",
                        redact(self.uri), len(self.pending),
                        redact(str(e).splitlines()[0][:200]) if str(e) else type(e).__name__, wait)
            return False
        finally:
            self.seconds += time.monotonic() - t0
        if self.failures:
            log.warning("tracking store %s answers again: sent the metrics kept meanwhile", redact(self.uri))
        self.failures = 0
        return True

    def summary(self) -> dict[str, Any]:
        """What the driver needs at the end: unsent rows (it sends them with MlflowClient's own retries) and the
        counters recorded on the run."""
        return {"unsent": list(self.pending), "deferred_points": self.deferred, "dropped_metrics": self.dropped,
                "seconds": self.seconds}


def log_metric_rows(uri: str, run_id: str, rows: list) -> None:
    """Rows (key, value, timestamp ms, step) that a training loop could not send, sent by the driver."""
    from mlflow.entities import Metric

    c = client(uri)
    for i in range(0, len(rows), LOG_BATCH_LIMIT):
        chunk = rows[i:i + LOG_BATCH_LIMIT]
        c.log_batch(run_id, metrics=[Metric(k, float(v), int(ts), int(s)) for k, v, ts, s in chunk])
