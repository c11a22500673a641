"""The options ``nas search`` and ``nas retrain`` share: the run's mode (one process or Ray Train), where it runs,
where it is recorded. A flag that does nothing in the chosen mode is refused with one line, never ignored."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click  # noqa: TID253

from orchestrator.lease import check_run_name
from orchestrator.ray_train import ClusterSpec
from orchestrator.runs import local_tracking_uri
from orchestrator.train.runtime import Precision, Runtime, resolve_device

__all__ = ["config_options", "run_options", "on_ray", "cluster_spec", "local_runtime", "refuse_unused"]

# Flags of a Ray run only, and what a one-process run does instead.
_RAY_ONLY = {"cpus_per_worker": "--cpus-per-worker", "gpu": "--gpu (in one process: --device cuda)",
             "allow_autoscale": "--allow-autoscale", "storage": "--storage (in one process: --out)",
             "max_failures": "--max-failures"}
_LOCAL_ONLY = {"device": "--device (on Ray: --gpu)"}
_RECORD = {"name": "--name", "experiment": "--experiment"}


def _apply(opts: list) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        for opt in reversed(opts):
            f = opt(f)
        return f

    return wrap


def config_options(config_help: str, out_default: str, out_help: str) -> Callable[[Callable[..., Any]], Any]:
    """``--config`` (a YAML file), ``--set KEY=VALUE`` overrides and ``--out``."""
    return _apply([
        click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
                     help=config_help),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override a config key (dotted, e.g. data.uri=/data/train); repeatable."),
        click.option("--out", "out_dir", default=out_default, show_default=True, type=click.Path(file_okay=False),
                     help=out_help),
    ])


def run_options(experiment: str, default_workers: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the shared options to a command (``experiment``: the default MLflow experiment)."""
    return _apply([
        click.option("--resume", is_flag=True, help="Continue from the checkpoint in --out (one process) or in the "
                     "run's folder under --storage (Ray). A fresh run refuses a folder that holds a checkpoint."),
        click.option("--overwrite", is_flag=True, help="Start afresh over the checkpoint in --out (one process) or "
                     "in the run's folder under --storage (Ray)."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
        click.option("--device", default="auto", show_default=True,
                     help="One process: auto (CUDA when there is one), cpu, cuda or cuda:N."),
        click.option("--ray", "on_ray_flag", is_flag=True,
                     help="Run data-parallel on Ray Train (implied by --workers)."),
        click.option("--workers", type=int, default=None,
                     help=f"Ray Train workers (default {default_workers} with --ray)."),
        click.option("--cpus-per-worker", type=float, default=1.0, show_default=True, help="Ray: CPUs per worker."),
        click.option("--gpu", is_flag=True, help="Ray: one GPU per worker; every tensor on it, NCCL all-reduce."),
        click.option("--allow-autoscale", is_flag=True,
                     help="Ray: the cluster autoscales, so start even if its nodes cannot host the workers yet."),
        click.option("--storage", default="runs", show_default=True,
                     help="Ray: checkpoint storage, a path (one node), NFS, or s3://bucket/prefix."),
        click.option("--name", default=None, help="The run's name: on Ray its folder under --storage (one folder name; "
                     "--resume continues it); in MLflow the run name."),
        click.option("--experiment", default=experiment, show_default=True, help="MLflow experiment."),
        click.option("--tracking-uri", default=None, help="MLflow tracking URI. Ray: default $MLFLOW_TRACKING_URI, "
                     "else sqlite:///mlflow.db here. One process: recorded when given or $MLFLOW_TRACKING_URI is set."),
        click.option("--max-failures", type=int, default=2, show_default=True,
                     help="Ray: worker-group restarts on failure."),
    ])


def _given(name: str) -> bool:
    src = click.get_current_context().get_parameter_source(name)
    return src is not None and src != click.core.ParameterSource.DEFAULT


def on_ray(kw: dict) -> bool:
    """Whether the command runs on Ray Train (``--ray`` or ``--workers``)."""
    return bool(kw["on_ray_flag"]) or kw["workers"] is not None


def refuse_unused(kw: dict, recorded_only: tuple[str, ...] = ()) -> None:
    """Refuse, with one line, ``--resume`` with ``--overwrite``, an unsafe ``--name``, and a flag the chosen mode
    would ignore: Ray's flags in one process, ``--device`` on Ray, and in an unrecorded one-process run the flags
    that only name its MLflow record (``--name``, ``--experiment`` and ``recorded_only``)."""
    ray = on_ray(kw)
    if kw["resume"] and kw["overwrite"]:
        raise click.UsageError("--resume and --overwrite exclude each other")
    if kw["name"] is not None:
        try:
            check_run_name(kw["name"])
        except ValueError as e:
            raise click.UsageError(str(e)) from None
    for key, flag in (_LOCAL_ONLY if ray else _RAY_ONLY).items():
        if _given(key):
            raise click.UsageError(f"{flag} does not apply to a {'Ray' if ray else 'one-process'} run")
    if not ray and local_tracking_uri(kw["tracking_uri"]) is None:
        for key in (*_RECORD, *recorded_only):
            if _given(key):
                raise click.UsageError(f"--{key.replace('_', '-')} names the run's MLflow record: give --tracking-uri "
                                       f"(or set MLFLOW_TRACKING_URI) to record a one-process run")


def cluster_spec(kw: dict, default_workers: int, parent_run_id: str | None = None,
                 tags: tuple[tuple[str, str], ...] = ()) -> ClusterSpec:
    """The Ray run's ``ClusterSpec`` from the shared options."""
    return ClusterSpec(num_workers=kw["workers"] or default_workers, use_gpu=kw["gpu"],
                       cpus_per_worker=kw["cpus_per_worker"], storage_path=kw["storage"], name=kw["name"],
                       max_failures=kw["max_failures"], tracking_uri=kw["tracking_uri"], experiment=kw["experiment"],
                       parent_run_id=parent_run_id, tags=tags, allow_autoscale=kw["allow_autoscale"],
                       progress=not kw["quiet"], resume=kw["resume"], overwrite=kw["overwrite"])


def local_runtime(kw: dict, precision: str, channels_last: bool) -> Runtime:
    """The one-process run's runtime: ``--device`` (checked: no silent fall-back to the CPU) and the numerics."""
    return Runtime(device=resolve_device(kw["device"]), precision=Precision(precision, channels_last))
