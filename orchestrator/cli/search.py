"""``nas search``: one ProxylessNAS search, in this process (``--device``) or on Ray Train (``--workers``)."""

from __future__ import annotations

import json
from pathlib import Path

import click  # noqa: TID253

from orchestrator import mlflow_links
from orchestrator.cli import app
from orchestrator.cli.options import cluster_spec, config_options, local_runtime, on_ray, refuse_unused, run_options
from orchestrator.export import atomic_write_bytes
from orchestrator.search.config import load_config
from orchestrator.search.jobs import run_distributed_search
from orchestrator.search.local import RESULT, search_here
from orchestrator.redact import redact


@app.command("search")
@config_options("A YAML preset, e.g. configs/demo.yaml.", "search-out",
                "Where result.json goes (and, in one process, checkpoint.pt).")
@run_options(experiment="nas-search", default_workers=2)
def search(config_path: str, overrides: tuple[str, ...], out_dir: str, **kw) -> None:
    """Search an architecture for the config's hardware and latency target; prints the derived architecture."""
    cfg = load_config(config_path, overrides)  # every key checked before any work
    refuse_unused(kw)
    if on_ray(kw):
        res = run_distributed_search(cfg, cluster_spec(kw, 2))
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(Path(out_dir) / RESULT, json.dumps({**res.search, "run_id": res.run_id}, indent=1,
                                                              default=str).encode())
    else:
        res = search_here(cfg, out_dir, rt=local_runtime(kw, cfg.precision, cfg.channels_last), resume=kw["resume"], overwrite=kw["overwrite"],
                          progress=not kw["quiet"], tracking_uri=kw["tracking_uri"], experiment=kw["experiment"],
                          name=kw["name"])
    s = res.search
    click.echo(f"arch: {s['arch']}")
    click.echo(f"derive: {s['derive']}")
    click.echo(f"latency: exact {s['exact_latency']:.4g} {s['unit']}, expected {s['expected_latency']:.4g}, "
               f"target {s['target']:.4g} ({s['hardware']})")
    if s.get("valid_accuracy") is not None:
        click.echo(f"valid accuracy (supernet weights): {s['valid_accuracy']:.3f} on {s['val_images']} images")
    click.echo(f"device: {s['device']} x {s['world_size']}")
    if on_ray(kw):
        click.echo(f"alpha fingerprint on every rank: {s['alpha_fingerprint']}")
        click.echo(f"checkpoint: {res.checkpoint_path}")
    if res.run_id is not None:
        click.echo(f"mlflow: run {res.run_id} at {redact(res.tracking_uri)}")
        click.echo(mlflow_links.where_to_look(res.tracking_uri, run_id=res.run_id))
    click.echo(f"result: {Path(out_dir) / RESULT}")
