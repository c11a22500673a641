"""``nas data``: prepare Parquet shards from an ImageFolder tree, and inspect a prepared set."""

from __future__ import annotations

import json
import os

import click  # noqa: TID253

from orchestrator.cli import app
from orchestrator.data.manifest import load_manifest
from orchestrator.data.prepare import PrepareOptions, prepare_shards
from orchestrator.data.shards import check_shards
from orchestrator.storage import resolve


@app.group()
def data() -> None:
    """Datasets: prepare shards (local or s3://) and inspect them."""


@data.command("prepare")
@click.option("--imagefolder", "folder", required=True, metavar="DIR", help="ImageFolder root: DIR/<class>/<image>.")
@click.option("--out", required=True, metavar="URI", help="Output folder or s3://bucket/prefix.")
@click.option("--shard-size", type=click.IntRange(min=1), default=1000, show_default=True, metavar="N",
              help="Images per shard file.")
@click.option("--row-group-size", type=click.IntRange(min=1), default=128, show_default=True,
              help="Images per row group (the unit a reader fetches).")
@click.option("--on-corrupt", type=click.Choice(["skip", "fail"]), default="fail", show_default=True,
              help="Leave corrupt images out (counted in the manifest) or refuse the tree.")
@click.option("--seed", type=int, default=0, show_default=True, help="Shuffle of images across shards.")
@click.option("--workers", type=click.IntRange(min=1), default=min(8, os.cpu_count() or 1), show_default=True,
              help="Threads reading and verifying images.")
@click.option("--endpoint", default=None, help="S3-compatible endpoint URL (default: AWS_ENDPOINT_URL).")
@click.option("--overwrite", is_flag=True, help="Replace an existing shard set at URI.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
def prepare(folder: str, out: str, shard_size: int, row_group_size: int, on_corrupt: str, seed: int, workers: int,
            endpoint: str | None, overwrite: bool, progress: bool | None) -> None:
    """Convert an ImageFolder tree into Parquet shards plus a manifest at URI."""
    opts = PrepareOptions(shard_size=shard_size, row_group_size=row_group_size, on_corrupt=on_corrupt, seed=seed,
                          overwrite=overwrite, workers=workers, endpoint=endpoint, progress=progress)
    m = prepare_shards(folder, out, opts)
    others = len(m.provenance.get("not_images", ()))  # each named in a warning when the folder was scanned
    click.echo(f"{m.num_samples} images, {m.num_classes} classes, {len(m.shards)} shards, "
               f"{len(m.skipped)} corrupt skipped{f', {others} not image files skipped' if others else ''} "
               f"-> {out.rstrip('/')}/manifest.json")


@data.command("info")
@click.argument("uri")
@click.option("--endpoint", default=None, help="S3-compatible endpoint URL (default: AWS_ENDPOINT_URL).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def info(uri: str, endpoint: str | None, as_json: bool) -> None:
    """Summarise the shard set at URI (and check that its shards are all there)."""
    loc = resolve(uri, endpoint)
    m = load_manifest(loc)
    check_shards(loc, m)
    if as_json:
        click.echo(m.to_json())
        return
    size = sum(s.bytes for s in m.shards)
    click.echo(f"{m.num_samples} images, {m.num_classes} classes, {len(m.shards)} shards, {size / 2**20:.1f} MiB")
    click.echo(f"classes: {', '.join(m.classes[:10])}{' ...' if m.num_classes > 10 else ''}")
    click.echo(f"skipped: {len(m.skipped)} corrupt; prepared {m.provenance.get('created_at', '?')} "
               f"from {m.provenance.get('source', '?')}")
    if m.num_classes <= 20:
        click.echo(json.dumps({"per_class": dict(zip(m.classes, m.counts))}))
