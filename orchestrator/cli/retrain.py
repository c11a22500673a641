"""``nas retrain``: train a derived architecture from scratch on the search's data, in this process or on Ray."""

from __future__ import annotations

import click

from orchestrator.cli import app


@app.command("retrain")
@click.option("--arch", "arch", required=True, help="An architecture string (e.g. a search's result.json arch) or a "
              "net.config file.")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A retrain config YAML, e.g. configs/retrain-digits.yaml or configs/retrain-imagenet.yaml.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key (dotted, e.g. data.uri=/data/train); repeatable.")
@click.option("--out", "out_dir", default="retrain-out", show_default=True, type=click.Path(file_okay=False),
              help="Where retrain.json, net.pt and net.onnx go (one process), or the ONNX (Ray).")
@click.option("--device", default="auto", show_default=True,
              help="One process: auto (CUDA when there is one), cpu, cuda or cuda:N.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--ray", "on_ray", is_flag=True, help="Run data-parallel on Ray Train (implied by --workers).")
@click.option("--workers", type=int, default=None, help="Ray Train workers (default 1 with --ray).")
@click.option("--cpus-per-worker", type=float, default=1.0, show_default=True)
@click.option("--gpu", is_flag=True, help="Ray: one GPU per worker; every tensor on it, NCCL all-reduce.")
@click.option("--allow-autoscale", is_flag=True,
              help="Ray: the cluster autoscales, so start even if its nodes cannot host the workers yet.")
@click.option("--storage", default="runs", show_default=True, help="Ray checkpoint storage: a path, NFS or s3://.")
@click.option("--name", default=None, help="Ray run name under --storage; the same name resumes the run.")
@click.option("--experiment", default="nas-retrain", show_default=True, help="MLflow experiment (Ray).")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
              "sqlite:///mlflow.db here).")
@click.option("--parent-run-id", default=None, help="Nest under this MLflow run (e.g. the search run).")
@click.option("--search-run-id", default=None, help="Lineage: the search run the architecture came from.")
def retrain(arch: str, config_path: str, overrides: tuple[str, ...], out_dir: str, device: str, quiet: bool,
            on_ray: bool, workers: int | None, cpus_per_worker: float, gpu: bool, allow_autoscale: bool, storage: str,
            name: str | None, experiment: str, tracking_uri: str | None, parent_run_id: str | None,
            search_run_id: str | None) -> None:
    """Retrain ARCH from scratch and report its validation top-1 accuracy and on how many images."""
    from orchestrator.netconfig import load_arch
    from orchestrator.retrain import load_retrain_config, retrain_data

    cfg = load_retrain_config(config_path, overrides)
    a = load_arch(arch)
    if on_ray or workers is not None:
        from orchestrator.retrain import RetrainSpec, run_retrain

        tags = (("nas.search_run_id", search_run_id),) if search_run_id else ()
        spec = RetrainSpec(num_workers=workers or 1, cpus_per_worker=cpus_per_worker, use_gpu=gpu,
                           storage_path=storage, name=name, tracking_uri=tracking_uri, experiment=experiment,
                           parent_run_id=parent_run_id or search_run_id, tags=tags, allow_autoscale=allow_autoscale)
        res = run_retrain(a.encode(), cfg, spec, onnx_dir=out_dir)
        click.echo(f"mlflow: run {res.run_id} at {res.tracking_uri}")
    else:
        from orchestrator.retrain import retrain_here
        from orchestrator.spaces import get_space
        from orchestrator.train.runtime import Precision, Runtime, resolve_device

        rt = Runtime(device=resolve_device(device), precision=Precision(cfg.precision, cfg.channels_last))
        retrain_data(get_space(a.space), cfg)  # a net that does not fit the data is refused before anything runs
        res = retrain_here(a.encode(), cfg, out_dir, rt=rt, progress=not quiet)
        click.echo(f"result: {out_dir}/retrain.json")
    click.echo(f"arch: {res.arch}")
    click.echo(f"val top-1: {res.val_accuracy:.4f} on {res.val_images} images after {res.epochs} epochs "
               f"({res.wall_seconds:.0f} s on {res.device})")
    click.echo(f"onnx: {res.onnx_path}")
