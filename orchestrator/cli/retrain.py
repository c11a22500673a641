"""``nas retrain``: train a derived architecture from scratch on the search's data, in this process or on Ray."""

from __future__ import annotations

import click  # noqa: TID253

from orchestrator import mlflow_links
from orchestrator.cli import app
from orchestrator.cli.options import cluster_spec, config_options, local_runtime, on_ray, refuse_unused, run_options
from orchestrator.netconfig import load_arch
from orchestrator.retrain.config import load_retrain_config
from orchestrator.retrain.jobs import run_retrain
from orchestrator.retrain.local import retrain_here
from orchestrator.redact import redact


@app.command("retrain")
@click.option("--arch", "arch", required=True, help="An architecture string (e.g. a search's result.json arch) or a "
              "net.config file.")
@config_options("A retrain config YAML, e.g. configs/retrain-digits.yaml or configs/retrain-imagenet.yaml.",
                "retrain-out", "Where net.onnx goes (and, in one process, retrain.json, net.pt and the checkpoint).")
@click.option("--parent-run-id", default=None, help="Nest under this MLflow run (e.g. the search run).")
@click.option("--search-run-id", default=None, help="Lineage: the search run the architecture came from.")
@run_options(experiment="nas-retrain", default_workers=1)
def retrain(arch: str, config_path: str, overrides: tuple[str, ...], out_dir: str, parent_run_id: str | None,
            search_run_id: str | None, **kw) -> None:
    """Retrain ARCH from scratch and report its validation top-1 accuracy and on how many images."""
    cfg = load_retrain_config(config_path, overrides)
    a = load_arch(arch)
    refuse_unused(kw, recorded_only=("parent_run_id", "search_run_id"))
    tags = (("nas.search_run_id", search_run_id),) if search_run_id else ()
    parent = parent_run_id or search_run_id
    if on_ray(kw):
        res = run_retrain(a.encode(), cfg, cluster_spec(kw, 1, parent, tags), onnx_dir=out_dir)
    else:
        res = retrain_here(a.encode(), cfg, out_dir, rt=local_runtime(kw, cfg.precision, cfg.channels_last),
                           progress=not kw["quiet"], resume=kw["resume"], overwrite=kw["overwrite"], tracking_uri=kw["tracking_uri"],
                           experiment=kw["experiment"], name=kw["name"], parent_run_id=parent, tags=dict(tags))
        click.echo(f"result: {out_dir}/retrain.json")
    if res.run_id is not None:
        click.echo(f"mlflow: run {res.run_id} at {redact(res.tracking_uri)}")
        click.echo(mlflow_links.where_to_look(res.tracking_uri, run_id=res.run_id))
    click.echo(f"arch: {res.arch}")
    if res.resumed_from_step:
        click.echo(f"resumed from step {res.resumed_from_step}")
    click.echo(f"val top-1: {res.val_accuracy:.4f} on {res.val_images} images after {res.epochs} epochs "
               f"({res.wall_seconds:.0f} s on {res.device})")
    click.echo(f"onnx: {res.onnx_path}")
