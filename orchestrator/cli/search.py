"""``nas search``: one ProxylessNAS search in this process, on the embedded digits."""

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
def search(config_path: str, overrides: tuple[str, ...], out_dir: str, resume: bool, quiet: bool) -> None:
    """Search an architecture for the config's hardware and latency target; prints the derived architecture."""
    from orchestrator.search import load_checkpoint, load_config, load_data, resolve_latency, run_search, save_checkpoint

    cfg = load_config(config_path, overrides)  # every key checked before any work
    latency = resolve_latency(cfg)
    data = load_data(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    saved = load_checkpoint(ckpt) if resume and ckpt.exists() else None
    result = run_search(cfg, data, latency=latency, resume=saved, progress=not quiet,
                        checkpoint=lambda state: save_checkpoint(state, ckpt))
    (out / "result.json").write_text(json.dumps(result.to_dict(), indent=1))
    click.echo(f"arch: {result.arch}")
    click.echo(f"latency: exact {result.exact_latency:.4g} {result.unit}, expected {result.expected_latency:.4g}, "
               f"target {result.target:.4g} ({result.hardware})")
    if result.valid_accuracy is not None:
        click.echo(f"valid accuracy (supernet weights): {result.valid_accuracy:.3f}")
    click.echo(f"result: {out / 'result.json'}")
