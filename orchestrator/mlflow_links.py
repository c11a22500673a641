"""What a user opens in MLflow: links to the model-training view of an experiment's runs, the experiment kind, the
comparable values on every retrain run, and the fronts as MLflow tables on a sweep's parent run.

MLflow 3.17's UI opens an experiment on its GenAI view unless the URL says ``workflowType=machine_learning`` (a
client-side switch, kept in the browser) or the experiment is tagged ``mlflow.experimentKind`` as
``custom_model_development``. Every link the project prints or records does both.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from urllib.parse import quote

from orchestrator import tracking
from orchestrator.redact import redact, strip_credentials

__all__ = ["EXPERIMENT_KIND_TAG", "MODEL_DEVELOPMENT", "WORKFLOW_PARAM", "experiment_url", "run_url", "where_to_look",
           "mark_model_development", "describe_run", "log_comparable", "log_front_tables", "DEFAULT_UI"]

log = logging.getLogger(__name__)

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_DEVELOPMENT = tracking.EXPERIMENT_TAGS[EXPERIMENT_KIND_TAG]  # MLflow 3.17's ExperimentKind for model training
WORKFLOW_PARAM = "workflowType=machine_learning"  # the UI's switch to its model-training view
DEFAULT_UI = "http://127.0.0.1:5000"  # where ``mlflow ui`` serves by default


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _base(server: str) -> str:
    """The server's address as a link: without credentials (the browser asks for them), anything secret masked."""
    return redact(strip_credentials(server)[0]).rstrip("/")


def experiment_url(server: str, experiment_id: str) -> str:
    """The experiment's runs in the model-training view: ``<server>/#/experiments/<id>?workflowType=...``."""
    return f"{_base(server)}/#/experiments/{quote(str(experiment_id))}?{WORKFLOW_PARAM}"


def run_url(server: str, experiment_id: str, run_id: str) -> str:
    """One run's page, in the model-training view."""
    return (f"{_base(server)}/#/experiments/{quote(str(experiment_id))}/runs/{quote(run_id)}"
            f"?{WORKFLOW_PARAM}")


def _experiment_id(uri: str, experiment: str | None, run_id: str | None) -> str:
    c = tracking.client(uri)
    if run_id:
        return c.get_run(run_id).info.experiment_id
    return tracking.experiment_id(uri, experiment or "", create=False)


def where_to_look(uri: str, experiment: str | None = None, run_id: str | None = None) -> str:
    """One line that opens the experiment's runs in the model-training view: the full URL on a tracking server;
    for a SQLite (or other) store, the ``mlflow ui`` command and the URL it will serve."""
    try:
        exp_id = _experiment_id(uri, experiment, run_id)
    except Exception as e:  # noqa: BLE001 (a closing message: the run is recorded; a link is a convenience)
        log.warning("could not look up the MLflow experiment at %s: %s", uri, str(e).splitlines()[0][:200])
        return f"open in mlflow: {redact(uri)}"
    if _is_http(uri):
        return f"open in mlflow: {experiment_url(uri, exp_id)}"
    return f"open in mlflow: mlflow ui --backend-store-uri {redact(uri)}   then {experiment_url(DEFAULT_UI, exp_id)}"


def mark_model_development(uri: str, experiment_id: str) -> None:
    """Tag the experiment as model development (unless it already says what it is)."""
    c = tracking.client(uri)
    if EXPERIMENT_KIND_TAG not in c.get_experiment(experiment_id).tags:
        c.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)


def describe_run(uri: str, run_id: str, text: str) -> None:
    """The run's description (the ``mlflow.note.content`` tag, shown on its page), with the link to its
    experiment's runs in the model-training view where the store is a server."""
    c = tracking.client(uri)
    exp_id = c.get_run(run_id).info.experiment_id
    link = (f"[runs of this experiment]({experiment_url(uri, exp_id)})" if _is_http(uri)
            else f"runs of this experiment: `mlflow ui --backend-store-uri {redact(uri)}`, then "
                 f"{experiment_url(DEFAULT_UI, exp_id)}")
    c.set_tag(run_id, "mlflow.note.content", f"{text}\n\n{link}")


def log_comparable(uri: str, run_id: str, *, hardware: str, unit: str, latency_source: str, measured: float,
                   predicted: float, top1: float | None, budget: float) -> None:
    """The values a user compares across a sweep's retrain runs, with the same names on every one: metrics
    ``latency`` (the latency the front uses: measured, or predicted where the hardware is outside the cluster),
    ``measured_latency``, ``predicted_latency``, ``top1``, ``budget``; params ``hardware``, ``latency_unit``,
    ``latency_source``. MLflow's scatter chart of ``latency`` against ``top1`` then draws the front."""
    # measured_latency and predicted_latency are the retrain's own metrics already (``sweep.trial``)
    metrics = {"latency": measured, "budget": budget, **({"top1": top1} if top1 is not None else {})}
    tracking.log_metrics(uri, run_id, metrics, step=0)
    from mlflow.entities import Param

    c = tracking.client(uri)
    have = c.get_run(run_id).data.params
    params = {"hardware": hardware, "latency_unit": unit, "latency_source": latency_source}
    new = [Param(k, v) for k, v in params.items() if k not in have]  # params are immutable: a resume logs none
    if new:
        c.log_batch(run_id, params=new)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def log_front_tables(uri: str, run_id: str, summary: Mapping[str, dict], experiment: str) -> list[str]:
    """Each hardware's points and front as MLflow tables (``pareto/points-<hw>.json``, ``pareto/front-<hw>.json``)
    on the run (a sweep's parent), shown on its page and in its artifacts; returns the artifact files."""
    c = tracking.client(uri)
    have = {a.path for a in c.list_artifacts(run_id, "pareto")}  # log_table appends: a re-run logs no second copy
    files = []
    for hw, s in summary.items():
        series = s["series"].get(experiment)
        if not series:
            continue
        for what in ("points", "front"):
            rows = series[what]
            cols = ["latency", "error", "label", "run_id", "point", "latency_source", "target"]
            table = {k: [r.get(k) for r in rows] for k in cols}
            table["top1"] = [1.0 - r["error"] for r in rows]
            table["unit"] = [s["unit"]] * len(rows)
            table["hardware"] = [hw] * len(rows)
            name = f"pareto/{what}-{_safe(hw)}.json"
            if name in have:
                continue
            c.log_table(run_id, data=table, artifact_file=name)
            files.append(name)
    return files
