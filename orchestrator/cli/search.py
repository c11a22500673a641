"""``nas search``: one ProxylessNAS search, in this process (``--device``) or on Ray Train (``--workers``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from orchestrator.cli import app

log = logging.getLogger(__name__)


@app.command("search")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A YAML preset, e.g. configs/demo.yaml.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key (dotted, e.g. arch.lr=0.01); repeatable.")
@click.option("--out", "out_dir", default="search-out", show_default=True, type=click.Path(file_okay=False),
              help="Where checkpoint.pt and result.json go.")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--device", default="auto", show_default=True,
              help="One process: auto (CUDA when there is one), cpu, cuda or cuda:N.")
@click.option("--ray", "on_ray", is_flag=True, help="Run data-parallel on Ray Train (implied by --workers).")
@click.option("--workers", type=int, default=None, help="Ray Train workers (default 2 with --ray).")
@click.option("--cpus-per-worker", type=float, default=1.0, show_default=True)
@click.option("--gpu", is_flag=True, help="Ray: one GPU per worker; every tensor on it, NCCL all-reduce.")
@click.option("--allow-autoscale", is_flag=True,
              help="Ray: the cluster autoscales, so start even if its nodes cannot host the workers yet.")
@click.option("--storage", default="runs", show_default=True,
              help="Checkpoint storage for Ray runs: a path (one node), NFS, or s3://bucket/prefix.")
@click.option("--name", default=None, help="Run name under --storage; the same name resumes the run.")
@click.option("--experiment", default="nas-search", show_default=True, help="MLflow experiment.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
              "sqlite:///mlflow.db here).")
@click.option("--max-failures", type=int, default=2, show_default=True, help="Worker-group restarts on failure.")
def search(config_path: str, overrides: tuple[str, ...], out_dir: str, resume: bool, quiet: bool, device: str,
           on_ray: bool, workers: int | None, cpus_per_worker: float, gpu: bool, allow_autoscale: bool, storage: str,
           name: str | None, experiment: str, tracking_uri: str | None, max_failures: int) -> None:
    """Search an architecture for the config's hardware and latency target; prints the derived architecture."""
    from orchestrator.export import atomic_write_bytes
    from orchestrator.search import load_checkpoint, load_config, open_data, resolve_latency, run_search, save_checkpoint
    from orchestrator.train.runtime import Precision, Runtime, resolve_device

    cfg = load_config(config_path, overrides)  # every key checked before any work
    if on_ray or workers is not None:
        from orchestrator.distributed import RunSpec, run_distributed_search

        spec = RunSpec(num_workers=workers or 2, use_gpu=gpu, cpus_per_worker=cpus_per_worker, storage_path=storage,
                       name=name, max_failures=max_failures, tracking_uri=tracking_uri, experiment=experiment,
                       allow_autoscale=allow_autoscale)
        res = run_distributed_search(cfg, spec)
        click.echo(f"arch: {res.search['arch']}")
        click.echo(f"derive: {res.search['derive']}")
        click.echo(f"latency: exact {res.search['exact_latency']:.4g} {res.search['unit']} "
                   f"(target {res.search['target']:.4g}, {res.search['hardware']})")
        if res.search.get("valid_accuracy") is not None:
            click.echo(f"valid accuracy (supernet weights): {res.search['valid_accuracy']:.3f} on "
                       f"{res.search['val_images']} images")
        click.echo(f"workers: {res.search['world_size']} on {res.search['device']}")
        click.echo(f"alpha fingerprint on every rank: {res.search['alpha_fingerprint']}")
        click.echo(f"mlflow: run {res.run_id} at {res.tracking_uri}")
        click.echo(f"checkpoint: {res.checkpoint_path}")
        return
    rt = Runtime(device=resolve_device(device), precision=Precision(cfg.precision, cfg.channels_last))
    latency = resolve_latency(cfg)
    data = open_data(cfg)  # classes checked against the space before any compute
    out = Path(out_dir)
    ckpt = out / "checkpoint.pt"
    saved = load_checkpoint(ckpt) if resume and ckpt.exists() else None
    out.mkdir(parents=True, exist_ok=True)
    result = run_search(cfg, data, rt=rt, latency=latency, resume=saved, progress=not quiet,
                        checkpoint=lambda state: save_checkpoint(state, ckpt))
    atomic_write_bytes(out / "result.json", json.dumps(result.to_dict(), indent=1).encode())
    click.echo(f"arch: {result.arch}")
    click.echo(f"derive: {result.derive}")
    click.echo(f"latency: exact {result.exact_latency:.4g} {result.unit}, expected {result.expected_latency:.4g}, "
               f"target {result.target:.4g} ({result.hardware})")
    if result.valid_accuracy is not None:
        click.echo(f"valid accuracy (supernet weights): {result.valid_accuracy:.3f} on {result.val_images} images")
    click.echo(f"device: {result.device}")
    click.echo(f"result: {out / 'result.json'}")
