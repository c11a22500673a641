"""``nas retrain``: train a derived architecture from scratch on Ray Train with a standard recipe."""

from __future__ import annotations

import click

from orchestrator.cli import app


@app.command("retrain")
@click.option("--arch", "arch", required=True, help="An architecture string or a net.config file.")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A retrain recipe YAML, e.g. configs/retrain-digits.yaml.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key; repeatable.")
@click.option("--workers", type=int, default=1, show_default=True)
@click.option("--cpus-per-worker", type=float, default=1.0, show_default=True)
@click.option("--gpu", is_flag=True, help="One GPU per worker.")
@click.option("--storage", default="runs", show_default=True, help="Checkpoint storage: a path, NFS or s3://.")
@click.option("--name", default=None, help="Run name under --storage; the same name resumes the run.")
@click.option("--experiment", default="nas-retrain", show_default=True, help="MLflow experiment.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
              "sqlite:///mlflow.db here).")
@click.option("--parent-run-id", default=None, help="Nest under this MLflow run (e.g. the search run).")
@click.option("--search-run-id", default=None, help="Lineage: the search run the architecture came from.")
@click.option("--out", "out_dir", default="retrain-out", show_default=True, type=click.Path(file_okay=False),
              help="Where the ONNX of the retrained net goes.")
def retrain(arch: str, config_path: str, overrides: tuple[str, ...], workers: int, cpus_per_worker: float, gpu: bool,
            storage: str, name: str | None, experiment: str, tracking_uri: str | None, parent_run_id: str | None,
            search_run_id: str | None, out_dir: str) -> None:
    """Retrain ARCH from scratch and report its validation top-1 accuracy."""
    from orchestrator.netconfig import load_arch
    from orchestrator.retrain import RetrainSpec, load_recipe, run_retrain
    from orchestrator.ray_session import ray_session

    recipe = load_recipe(config_path, overrides)
    a = load_arch(arch)
    tags = (("nas.search_run_id", search_run_id),) if search_run_id else ()
    spec = RetrainSpec(num_workers=workers, cpus_per_worker=cpus_per_worker, use_gpu=gpu, storage_path=storage,
                       name=name, tracking_uri=tracking_uri, experiment=experiment,
                       parent_run_id=parent_run_id or search_run_id, tags=tags)
    with ray_session():
        res = run_retrain(a.encode(), recipe, spec, onnx_dir=out_dir)
    click.echo(f"arch: {res.arch}")
    click.echo(f"val top-1: {res.val_accuracy:.4f} after {res.epochs} epochs ({res.wall_seconds:.0f} s)")
    click.echo(f"onnx: {res.onnx_path}")
    click.echo(f"mlflow: run {res.run_id} at {res.tracking_uri}")
